"""Two-stage ASEN++ training: the reference's triplets, losses, parameter groups and
schedules, with exact resume, a time budget and per-epoch validation."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asen import AsenError, distributed
from asen.checkpoint import atomic_save, checkpoint_attributes, load_checkpoint, make_checkpoint
from asen.config import Config, config_from_dict
from asen.data.datasets import TripletImages, TripletSampler, batches, make_loader
from asen.data.splits import open_dataset
from asen.encoders import ModelInfo, TorchEncoder, resolve_device
from asen.evaluate import evaluate, num_pairs
from asen.losses import alignment_loss, triplet_loss
from asen.model.asen import ASENPP, BranchOutputs


@dataclass
class TrainCallbacks:
    """Hooks for progress display; every one is optional."""

    epoch_start: Callable[[int, int, int], None] | None = None  # epoch, first step, steps
    step: Callable[[dict], None] | None = None  # {"loss", "triplets_per_s", ...}
    eval_start: Callable[[int], None] | None = None  # number of entries to encode
    eval_progress: Callable[[int], None] | None = None
    epoch_end: Callable[[dict], None] | None = None  # the metrics.jsonl record
    message: Callable[[str], None] | None = None


@dataclass
class TrainResult:
    run_dir: Path
    records: list[dict] = field(default_factory=list)
    best_val_map: float = -1.0


class _Branches(torch.nn.Module):
    """`model.branches` as a forward, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: ASENPP):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, attribute: torch.Tensor) -> BranchOutputs:
        return self.model.branches(image, attribute)


def _plot_curves(metrics_path: Path, cb: TrainCallbacks) -> None:
    """Redraw curves.png beside metrics.jsonl; a plotting failure never stops training."""
    try:
        from asen.visualize import plot_training

        plot_training(metrics_path)
    except Exception as e:  # noqa: BLE001 - any plotting error is reported, not raised
        if cb.message:
            cb.message(f"could not draw {metrics_path.with_name('curves.png')}: {e}")


def _param_groups(model: ASENPP, cfg: Config, stage: int) -> list[dict]:
    """Stage 1: one group. Stage 2: the local branch at `lr`, the rest at `lr_global`."""
    if stage == 1:
        return [{"params": list(model.parameters()), "lr": cfg.train.lr, "name": "all"}]
    local = list(model.local_branch.parameters())
    ids = {id(p) for p in local}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [
        {"params": local, "lr": cfg.train.lr, "name": "local"},
        {"params": rest, "lr": cfg.train.lr_global, "name": "global"},
    ]


def _init_from(model: ASENPP, path: Path, names: list[str]) -> None:
    """Initialise from a (stage-1) checkpoint: every parameter but the local branch must match."""
    ckpt = load_checkpoint(path)
    if [a.name for a in checkpoint_attributes(ckpt)] != names:
        raise AsenError(f"{path}: --init checkpoint was trained on other attributes")
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as e:
        raise AsenError(
            f"{path}: --init checkpoint has other model sizes ({str(e).splitlines()[1].strip()})"
        ) from e
    missing = [k for k in missing if not k.startswith("local_branch.")]
    if missing or unexpected:
        raise AsenError(
            f"{path}: --init checkpoint does not match the model "
            f"(e.g. {(missing or unexpected)[0]})"
        )


def train(
    cfg: Config,
    data_root: str | Path,
    stage: int,
    run_dir: str | Path,
    init: str | Path | None = None,
    time_budget_min: float | None = None,
    device: str = "auto",
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
) -> TrainResult:
    """Train `stage` (1 or 2) on a split-format dataset; write checkpoints and metrics
    to `run_dir`. Returns the per-epoch records.

    Under torchrun (inside `distributed.process_group()`), each of the W processes trains
    on batch_size / W of every step's triplets with DistributedDataParallel; rank 0 alone
    reports progress and writes files."""
    world, rank = distributed.world_size(), distributed.rank()
    main = rank == 0
    cb = (callbacks if main else None) or TrainCallbacks()
    run_dir = Path(run_dir)
    last_path, best_path, metrics_path = (
        run_dir / "last.pt",
        run_dir / "best.pt",
        run_dir / "metrics.jsonl",
    )
    if stage not in (1, 2):
        raise AsenError(f"--stage must be 1 or 2, got {stage}")
    if run_dir.exists() and not run_dir.is_dir():
        raise AsenError(f"{run_dir}: --out exists and is not a folder")
    if last_path.exists() and not resume:
        raise AsenError(
            f"{run_dir}: holds a run already; pass --resume to continue it or choose another --out"
        )
    if resume and not last_path.exists():
        raise AsenError(f"{last_path}: nothing to resume (no last.pt in the run folder)")
    if cfg.train.batch_size < 1 or cfg.train.triplets_per_epoch < 1:
        raise AsenError("train.batch_size and train.triplets_per_epoch must be at least 1")

    dev = resolve_device(device)
    state = load_checkpoint(last_path) if resume else None
    if state is not None:
        if state["stage"] != stage:
            raise AsenError(f"{last_path}: is a stage-{state['stage']} run, not stage {stage}")
        epochs = cfg.train.epochs
        cfg = config_from_dict(state["config"])
        cfg.train.epochs = epochs
    for key, value in (
        ("batch_size", cfg.train.batch_size),
        ("triplets_per_epoch", cfg.train.triplets_per_epoch),
    ):
        if value % world:
            raise AsenError(
                f"train.{key} ({value}) must be divisible by the number of processes ({world}): "
                "each process takes an equal share, so that a step and an epoch see as many "
                "triplets as in one process"
            )
    dataset = open_dataset(data_root, cfg.data.attributes or None)
    labels = dataset.train_labels()
    files = dataset.files("train")
    val_pairs = num_pairs(dataset, "valid")  # validates the valid split up front
    sampler = TripletSampler(labels, cfg.train.seed)

    torch.manual_seed(cfg.train.seed)
    model = ASENPP(cfg.model, len(dataset.attributes), stage)
    if init is not None and state is None:
        _init_from(model, Path(init), dataset.names)
    model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(_param_groups(model, cfg, stage))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.train.lr_step, cfg.train.lr_gamma)
    epoch, start_step, best = 0, 0, -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, start_step, best = state["epoch"], state["step"], state["best_val_map"]
        torch.set_rng_state(state["torch_rng"])
    forward = model.branches if world == 1 else distributed.data_parallel(_Branches(model))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    info = ModelInfo(
        dataset.attributes, cfg.model.source_size, model.embedding_dim, cfg.model.beta, stage
    )
    encoder = TorchEncoder(model, info, dev, cfg.train.eval_batch_size)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    bs, per_epoch = cfg.train.batch_size, cfg.train.triplets_per_epoch
    steps_per_epoch = math.ceil(per_epoch / bs)
    rank_bs = bs // world  # this process's share of each step
    if world > 1 and cb.message:
        cb.message(f"{world} processes ({distributed.backend()}): {rank_bs} triplets a step each")
    result = TrainResult(run_dir, best_val_map=best)
    started = time.monotonic()
    stop = False
    while epoch < cfg.train.epochs and not stop:
        triplets = sampler.epoch(epoch, per_epoch // world, rank)
        loader = make_loader(
            TripletImages(
                files,
                triplets[start_step * rank_bs :],
                cfg.model.source_size,
                cfg.data.skip_bad_images,
            ),
            rank_bs,
            cfg.data.workers,
        )
        if cb.epoch_start:
            cb.epoch_start(epoch, start_step, steps_per_epoch)
        model.train()
        sums = {"loss": 0.0, "loss_global": 0.0, "loss_local": 0.0, "loss_align": 0.0}
        steps, seen, skipped = 0, 0, 0
        epoch_t0 = time.monotonic()
        step = start_step
        for images, attrs, ok in batches(loader):
            skipped += int((~ok).sum())
            images, attrs = images[ok], attrs[ok]
            n = len(attrs)
            step += 1
            if world > 1 and cfg.data.skip_bad_images and distributed.any_rank(n == 0):
                n = 0  # DDP steps all ranks together: a batch empty on one rank is skipped by all
            if n:
                x = (
                    images.transpose(0, 1)
                    .reshape(3 * n, *images.shape[2:])
                    .to(dev, non_blocking=True)
                )
                a = attrs.repeat(3).to(dev, non_blocking=True)
                with autocast:
                    out = forward(x, a)
                g = out.global_embedding.float().view(3, n, -1)
                losses = {"loss_global": triplet_loss(g[0], g[1], g[2], cfg.train.margin)}
                loss = losses["loss_global"]
                if stage == 2:
                    local = out.local_embedding.float()
                    lv = local.view(3, n, -1)
                    losses["loss_local"] = triplet_loss(lv[0], lv[1], lv[2], cfg.train.margin)
                    losses["loss_align"] = alignment_loss(out.global_embedding.float(), local)
                    loss = (
                        loss
                        + cfg.train.local_weight * losses["loss_local"]
                        + cfg.train.align_weight * losses["loss_align"]
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums["loss"] += loss.item()
                for k, v in losses.items():
                    sums[k] += v.item()
                steps += 1
                seen += n
            tps = seen / max(time.monotonic() - epoch_t0, 1e-9)
            if cb.step:
                cb.step({"step": step, "loss": sums["loss"] / max(steps, 1), "triplets_per_s": tps})
            if time_budget_min is not None and distributed.any_rank(
                time.monotonic() - started >= time_budget_min * 60
            ):  # every rank stops after the same step
                stop = True
                break
        epoch_time = time.monotonic() - epoch_t0
        if world > 1:  # the record counts every rank's triplets and averages their losses
            seen, skipped, *loss_sums = distributed.all_sum([seen, skipped, *sums.values()])
            seen, skipped = round(seen), round(skipped)
            sums = {k: v / world for k, v in zip(sums, loss_sums, strict=True)}
        partial = step < steps_per_epoch
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        if partial:
            start_step = step
        else:
            scheduler.step()
            epoch, start_step = epoch + 1, 0
        if cb.eval_start:
            cb.eval_start(val_pairs)
        distributed.sync_buffers(model)  # all ranks validate (a share each) rank 0's model
        val = evaluate(
            encoder,
            dataset,
            "valid",
            cfg.train.eval_batch_size,
            cfg.data.workers,
            cfg.data.skip_bad_images,
            cb.eval_progress,
        )
        record = {
            "epoch": epoch if not partial else epoch + 1,
            "partial": partial,
            "stage": stage,
            "steps": steps,
            "triplets": seen,
            "skipped_images": skipped,
            **{
                k: v / max(steps, 1)
                for k, v in sums.items()
                if stage == 2 or k in ("loss", "loss_global")
            },
            "lr": lrs,
            "triplets_per_s": seen / max(epoch_time, 1e-9),
            "val_map": val.overall_map,
            "val_per_attribute": val.per_attribute,
            "elapsed_s": time.monotonic() - started,
        }
        result.records.append(record)
        if main:  # rank 0 writes; the other ranks hold the same model and figures
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            _plot_curves(metrics_path, cb)
            ckpt = make_checkpoint(
                model,
                cfg,
                dataset.attributes,
                epoch=epoch,
                step=start_step,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                torch_rng=torch.get_rng_state(),
                best_val_map=max(best, val.overall_map),
                val_map=val.overall_map,
            )
            if val.overall_map > best:
                atomic_save(ckpt, best_path)
            atomic_save(ckpt, last_path)
        best = max(best, val.overall_map)
        result.best_val_map = best
        if cb.epoch_end:
            cb.epoch_end(record)
    return result
