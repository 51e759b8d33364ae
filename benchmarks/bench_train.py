"""Training step speed in each mode, at the synthetic (small) and the paper's sizes, and
the whole `asen train` loop against the step alone.

Steps: the trainer's own step (asen.training.step.train_step: forward over micro-batches,
losses, backward, Adam) on in-memory uint8 triplets, 16 triplets (48 images) a step,
random weights, stage 1 and stage 2. Modes, timed interleaved (one step of each in turn):

- fp32: one pass of 48 images, contiguous weights, fp32;
- fp32_micro: three passes of 16 (train.micro_batch=16);
- channels_last: fp32 micro-batched, channels_last weights;
- bf16_channels_last: as channels_last under bf16 autocast (the default on a CPU with
  native BF16; fp32 channels_last is the default elsewhere).

Floor (--floor): the backbones alone (torchvision ResNet-50, and ResNet-34 in stage 2,
truncated after layer3), fp32, contiguous, three passes of 16, forward, a plain loss,
backward and Adam: what the reference's network costs on this machine in the same run,
without the attention, crop, losses or input handling.

On CPU the process keeps freed memory as `asen train` does (asen.training.heap).

Loop (--loop): `asen.train.train` on a generated synthetic dataset with DataLoader workers
decoding, timed by its own record (triplets/s over the epoch's steps, seconds waiting for
data), beside the step alone in the default mode at the same size.

Prints one JSON object: medians, ratios to fp32 one pass, and the reference ASEN++
implementation's step times (its own training loop, measured on the same 2-core CPU) for the
paper size.

    python -m benchmarks.bench_train [--quick] [--sizes small paper] [--floor] [--loop]
        [--figures PATH]
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from asen.config import load_config
from asen.model.asen import ASENPP
from asen.model.backbones import create_backbone
from asen.training.heap import keep_freed_memory
from asen.training.setup import param_groups
from asen.training.step import (
    CPU_MICRO_BATCH,
    MicroBatches,
    StepSetup,
    resolve_precision,
    train_step,
)
from benchmarks import harness

SIZES = {"small": ["small"], "paper": []}  # paper: the defaults (ResNet-50/34, 224/112)
MODES = {  # name: (micro_batch, channels_last, precision)
    "fp32": (0, False, "fp32"),
    "fp32_micro": (CPU_MICRO_BATCH, False, "fp32"),
    "channels_last": (CPU_MICRO_BATCH, True, "fp32"),
    "bf16_channels_last": (CPU_MICRO_BATCH, True, "bf16"),
}
REFERENCE_S = {"paper_stage1": 8.0, "paper_stage2": 9.7}  # s a step, the reference's loop
TRIPLETS = 16
ATTRIBUTES = 8


def _setup(size: str, stage: int, mode: str, device: torch.device) -> StepSetup:
    cfg = load_config([f"stage{stage}", *SIZES[size]], [f"train.batch_size={TRIPLETS}"])
    micro, channels_last, precision = MODES[mode]
    torch.manual_seed(0)
    model = ASENPP(cfg.model, ATTRIBUTES, stage).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(param_groups(model, cfg))
    return StepSetup(MicroBatches(model, micro), optimizer, cfg.train, device, precision)


def _batch(size: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    s = load_config(SIZES[size]).model.source_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (TRIPLETS, 3, 3, s, s), dtype=torch.uint8, generator=g)
    return images.to(device), torch.randint(0, ATTRIBUTES, (TRIPLETS,), generator=g).to(device)


def _step(setup: StepSetup, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    train_step(setup, *batch)
    if setup.device.type == "cuda":
        torch.cuda.synchronize()


def _floor(size: str, stage: int, device: torch.device) -> Callable[[], None]:
    """A step of the bare backbones (fp32, contiguous, micro-batches of 16)."""
    m = load_config(SIZES[size]).model
    torch.manual_seed(0)
    nets = [(create_backbone(m.global_backbone)[0], m.image_size)]
    if stage == 2:
        nets.append((create_backbone(m.local_backbone)[0], m.local_size))
    nets = [(net.to(device).train(), side) for net, side in nets]
    optimizer = torch.optim.Adam([p for net, _ in nets for p in net.parameters()])
    inputs = [torch.randn(3 * TRIPLETS, 3, side, side, device=device) for _, side in nets]

    def step() -> None:
        loss = sum(
            net(part).mean((2, 3)).pow(2).mean()
            for (net, _), x in zip(nets, inputs, strict=True)
            for part in x.split(CPU_MICRO_BATCH)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def step_modes(
    size: str, stage: int, *, steps: int, device: torch.device, floor: bool = False
) -> dict:
    """Median step seconds of every mode, timed in turn (the first round warms up)."""
    batch = _batch(size, device)
    calls: dict[str, Callable[[], None]] = {
        mode: functools.partial(_step, _setup(size, stage, mode, device), batch) for mode in MODES
    }
    if floor:
        calls["backbones_only_fp32_micro"] = _floor(size, stage, device)
    times = harness.interleaved(calls, steps, warmup=1)
    medians = {mode: harness.median(t) for mode, t in times.items()}
    out = {
        mode: {"median_step_s": round(m, 3), "triplets_per_s": round(TRIPLETS / m, 2)}
        for mode, m in medians.items()
    }
    for mode, m in medians.items():
        out[mode]["speedup_vs_fp32"] = round(medians["fp32"] / m, 2)
    reference = REFERENCE_S.get(f"{size}_stage{stage}")
    if reference is not None and device.type == "cpu":
        out["reference_step_s"] = reference
        out["speedup_vs_reference"] = {m: round(reference / v, 2) for m, v in medians.items()}
    return out


def loop_vs_step(size: str, *, steps: int, workers: int, device: torch.device) -> dict:
    """The whole training loop (`asen.train.train`, DataLoader workers decoding) against
    the step alone, stage 1, default settings."""
    from asen.data.synthetic import generate
    from asen.train import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(["stage1", *SIZES[size]])
        generate(
            Path(tmp, "data"), seed=0, n_train=200, n_eval=40, image_size=cfg.model.source_size
        )
        cfg.train.batch_size, cfg.train.triplets_per_epoch = TRIPLETS, TRIPLETS * steps
        cfg.train.epochs, cfg.data.workers = 1, workers
        result = train(
            cfg, data_root=Path(tmp, "data"), stage=1, run_dir=Path(tmp, "run"), device=str(device)
        )
    record = result.records[0]
    default = (
        "bf16_channels_last" if resolve_precision("auto", device) == "bf16" else "channels_last"
    )
    setup = _setup(size, 1, default, device)
    batch = _batch(size, device)
    alone = harness.median(
        harness.interleaved({"step": lambda: _step(setup, batch)}, steps)["step"]
    )
    loop_step_s = TRIPLETS / record["triplets_per_s"]
    return {
        "workers": workers,
        "steps": record["steps"],
        "mode": default,
        "loop_step_s": round(loop_step_s, 3),
        "step_alone_s": round(alone, 3),
        "loop_over_step": round(loop_step_s / alone, 2),
        "data_wait_s_per_step": round(record["data_wait_s"] / record["steps"], 4),
        "data_wait_fraction": round(record["data_wait_s"] / (loop_step_s * record["steps"]), 3),
    }


def figures(result: dict) -> harness.Figures:
    """One row per size, stage and mode; the whole loop against the step in the notes."""
    rows = []
    for key, modes in result.items():
        if not key.endswith(("_stage1", "_stage2")):
            continue
        for mode, row in modes.items():
            if isinstance(row, dict) and "median_step_s" in row:
                rows.append(
                    [
                        key.replace("_", " "),
                        mode,
                        row["median_step_s"],
                        row["triplets_per_s"],
                        row["speedup_vs_fp32"],
                        modes.get("speedup_vs_reference", {}).get(mode),
                    ]
                )
    notes = [
        f"{result['triplets_a_step']} triplets a step on {result['device']}, "
        f"{result['threads']} threads; medians of interleaved steps after one warm-up"
    ]
    for key in (k for k in result if k.endswith("_loop")):
        loop = result[key]
        notes.append(
            f"{key}: the whole loop ({loop['workers']} workers) takes "
            f"{loop['loop_over_step']}x the step alone; data wait "
            f"{loop['data_wait_fraction']:.1%} of it"
        )
    columns = [
        "size and stage",
        "mode",
        "step (s)",
        "triplets/s",
        "speed-up vs fp32",
        "speed-up vs the reference loop",
    ]
    return harness.Figures("Training step speed by mode", columns, rows, notes)


def _parser():
    parser = harness.parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (1-2 timed steps)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (small size)")
    parser.add_argument("--paper-steps", type=int, default=None, help="timed steps (paper)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--floor", action="store_true", help="also time the bare backbones")
    parser.add_argument("--loop", action="store_true", help="also time the whole loop")
    parser.add_argument("--loop-only", action="store_true", help="time the loop alone")
    parser.add_argument("--workers", type=int, default=2, help="loop: DataLoader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main() -> None:
    args = _parser().parse_args()
    steps = {
        "small": args.steps or (2 if args.quick else 10),
        "paper": args.paper_steps or (1 if args.quick else 3),
    }
    device = torch.device(args.device)
    kept = device.type == "cpu" and keep_freed_memory()
    result: dict = {
        "benchmark": "train",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "triplets_a_step": TRIPLETS,
        "freed_memory_kept": kept,
        "load_avg_before": os.getloadavg(),
    }
    for size in args.sizes:
        for stage in () if args.loop_only else (1, 2):
            result[f"{size}_stage{stage}"] = step_modes(
                size, stage, steps=steps[size], device=device, floor=args.floor
            )
        if args.loop or args.loop_only:
            result[f"{size}_loop"] = loop_vs_step(
                size, steps=max(steps[size], 3), workers=args.workers, device=device
            )
    result["load_avg_after"] = os.getloadavg()
    harness.finish(result, args, figures)


if __name__ == "__main__":
    main()
