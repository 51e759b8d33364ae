"""`asen train`: one stage of ASEN++ training, under torchrun or not."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from asen.commands.options import Configs, DataRoot, Device, DistTimeout, Sets, output_folder
from asen.commands.ui import console, progress, say
from asen.config import TRAIN_PRECISIONS

# Training precision (asen.config.TRAIN_PRECISIONS): auto picks bf16 where it is native.
Precision = Enum("Precision", {p: p for p in TRAIN_PRECISIONS}, type=str)
Stage = Annotated[
    int, typer.Option(min=1, max=2, help="1: global branch; 2: adds the local branch.")
]
RunFolder = Annotated[
    Path,
    typer.Option(callback=output_folder, help="Run folder: last.pt, best.pt, metrics.jsonl."),
]
TrainWorkers = Annotated[
    int | None, typer.Option(min=0, help="DataLoader workers (default: config data.workers).")
]
CacheMb = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="MiB of decoded training images kept for the run, 0 for none "
        "(default: config data.cache_mb, 2048).",
    ),
]
SkipBad = Annotated[
    bool,
    typer.Option("--skip-bad-images", help="Skip and count undecodable images instead of failing."),
]


def _callbacks(bars: Progress, stage: int):
    """Progress bars and one line an epoch for `asen.train.train`."""
    from asen.train import TrainCallbacks

    task: dict = {"id": None}

    def epoch_start(epoch: int, first: int, total: int) -> None:
        task["id"] = bars.add_task(
            f"stage {stage} epoch {epoch + 1}", total=total, completed=first, info=""
        )

    def step(s: dict) -> None:
        info = f"loss {s['loss']:.4f}  {s['triplets_per_s']:.0f} triplets/s"
        bars.update(task["id"], completed=s["step"], info=info)

    def eval_start(n: int) -> None:
        task["eval"] = bars.add_task("  validating", total=n, info="")

    def epoch_end(r: dict) -> None:
        bars.remove_task(task["eval"])
        console.print(
            f"epoch {r['epoch']}{' (partial)' if r['partial'] else ''}: loss {r['loss']:.4f}  "
            f"val mAP {r['val_map']:.4f}  {r['triplets_per_s']:.0f} triplets/s"
            + (f"  skipped images {r['skipped_images']}" if r["skipped_images"] else "")
        )

    return TrainCallbacks(
        epoch_start=epoch_start,
        step=step,
        eval_start=eval_start,
        eval_progress=lambda n: bars.advance(task["eval"], n),
        epoch_end=epoch_end,
        message=say,
    )


def _changes(*, epochs, workers, cache_mb, skip_bad_images) -> dict[str, Any]:
    """The config fields the command's own options set."""
    named = {
        "train.epochs": epochs,
        "data.workers": workers,
        "data.cache_mb": cache_mb,
        "data.skip_bad_images": skip_bad_images or None,
    }
    return {key: value for key, value in named.items() if value is not None}


def train(
    data: DataRoot,
    config: Configs = None,
    set_: Sets = None,
    stage: Stage = 1,
    init: Annotated[
        Path | None, typer.Option(help="Checkpoint to initialise from (stage 1 for stage 2).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override train.epochs.")] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Minutes; stop cleanly after the step that crosses it.")
    ] = None,
    out: RunFolder = Path("runs/stage1"),
    device: Device = "auto",
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out exactly where it stopped.")
    ] = False,
    weights: Annotated[
        str | None, typer.Option(help="Backbone weights: 'imagenet' or a local state-dict file.")
    ] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(help="Training precision (default: train.precision, auto: bf16 if native)."),
    ] = None,
    workers: TrainWorkers = None,
    cache_mb: CacheMb = None,
    skip_bad_images: SkipBad = False,
    dist_timeout: DistTimeout = 600.0,
) -> None:
    """Train ASEN++ (stage 1 or 2) with the reference's triplets, losses and schedules.
    Runs unchanged under torchrun: one process a GPU, gradients averaged over them.
    SIGTERM or Ctrl-C finishes the step, validates and saves (then --resume continues)."""
    from asen.config import load_config
    from asen.distributed import is_main, process_group
    from asen.train import train as run_training

    overrides = list(set_ or [])
    if weights is not None:
        overrides.append(f"model.weights={weights}")
    if precision is not None:
        overrides.append(f"train.precision={precision.value}")
    changes = _changes(
        epochs=epochs, workers=workers, cache_mb=cache_mb, skip_bad_images=skip_bad_images
    )
    cfg = None  # --resume without -c/--set/--weights/--precision: the run's own settings
    if config or overrides or not resume:
        cfg = load_config([f"stage{stage}", *(config or [])], overrides)
    with process_group(device, dist_timeout), progress() as bars:
        result = run_training(
            cfg,
            data_root=data,
            stage=stage,
            run_dir=out,
            init=init,
            time_budget_min=time_budget,
            device=device,
            resume=resume,
            changes=changes,
            callbacks=_callbacks(bars, stage),
        )
        if not is_main():
            return
    if result.stopped_by:  # SIGTERM, SIGINT or the time budget
        console.print(f"stopped by {result.stopped_by}; saved in {out}: continue with --resume")
        if result.stopped_by == "SIGINT":
            raise typer.Exit(130)
    console.print(
        f"best val mAP {result.best_val_map:.4f}; checkpoints in {out} (best.pt, last.pt)"
    )
