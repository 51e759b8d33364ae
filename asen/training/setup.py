"""Set-up and resume: the run's config (a resumed run keeps its checkpoint's), its checks,
the training data, and the model, optimizer and scheduler (fresh, from --init, or resumed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asen import AsenError
from asen.checkpoint import checkpoint_attributes, load_checkpoint
from asen.config import AttributeSpec, Config, check_declared, config_from_dict
from asen.data.cache import DecodedImages
from asen.data.datasets import TripletSampler
from asen.data.splits import SplitDataset, open_dataset
from asen.evaluate import num_pairs
from asen.model.asen import ASENPP
from asen.training.run_folder import RunFolder

# may change on --resume
RESUMABLE = ("train.epochs", "data.workers", "data.skip_bad_images", "data.cache_mb")


def _flat(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _apply(cfg: Config, changes: Mapping[str, Any]) -> Config:
    for key, value in changes.items():
        if key not in RESUMABLE:
            raise ValueError(f"{key} is not a run setting that may change on resume")
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg


def resolve_config(
    cfg: Config | None, *, saved: dict | None, changes: Mapping[str, Any], source: Path
) -> Config:
    """The run's config. A fresh run: `cfg` with `changes`. A resumed run: the checkpoint's
    config with `changes` (the RESUMABLE settings); a `cfg` given too must describe the same
    run, or one line names the fields that differ."""
    if saved is None:
        if cfg is None:
            raise ValueError("a fresh run needs a config")
        return _apply(cfg, changes)
    run = config_from_dict(saved["config"])
    if cfg is not None:
        theirs, ours = _flat(run.to_dict()), _flat(cfg.to_dict())
        differ = [k for k in ours if k not in RESUMABLE and ours[k] != theirs.get(k)]
        if differ:
            shown = ", ".join(
                f"{k} ({theirs.get(k)!r} in the run, {ours[k]!r} given)" for k in differ[:3]
            )
            more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
            raise AsenError(
                f"{source}: --resume continues the run with its own settings, but -c/--set/"
                f"--weights/--precision change {shown}{more}; drop them or train into another --out"
            )
    return _apply(run, changes)


def check_config(cfg: Config, world: int) -> None:
    """Training settings no run can use, each one line naming the field: the declared
    bounds and choices (again: resume changes and code-built configs skip the readers'
    checks) and the split of a step over `world` processes."""
    check_declared(cfg, "training config")
    t = cfg.train
    for key, value in (("batch_size", t.batch_size), ("triplets_per_epoch", t.triplets_per_epoch)):
        if value % world:
            raise AsenError(
                f"train.{key} ({value}) must be divisible by the number of processes ({world}): "
                "each process takes an equal share, so that a step and an epoch see as many "
                "triplets as in one process"
            )


@dataclass
class TrainingData:
    """The dataset, its training images (decoded once a run) and the triplet sampler."""

    dataset: SplitDataset
    images: DecodedImages
    sampler: TripletSampler
    val_pairs: int

    @property
    def attributes(self) -> list[AttributeSpec]:
        return self.dataset.attributes


def open_training_data(cfg: Config, data_root: str | Path) -> TrainingData:
    """Open and check the dataset (the valid split too, before any training)."""
    dataset = open_dataset(data_root, cfg.data.attributes or None)
    labels: np.ndarray = dataset.train_labels()
    return TrainingData(
        dataset=dataset,
        images=DecodedImages(
            dataset.files("train"), cfg.model.source_size, budget_mb=cfg.data.cache_mb
        ),
        sampler=TripletSampler(labels, cfg.train.seed),
        val_pairs=num_pairs(dataset, "valid"),
    )


@dataclass
class TrainState:
    """Everything a checkpoint holds: model, optimizer, scheduler, position and records."""

    cfg: Config
    attributes: list[AttributeSpec]
    model: ASENPP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed in epoch `epoch` (a partial epoch)
    best_val_map: float = -1.0
    records: list[dict] = field(default_factory=list)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.cfg.train.triplets_per_epoch / self.cfg.train.batch_size)


def param_groups(model: ASENPP, cfg: Config) -> list[dict]:
    """Stage 1: one group. Stage 2: the local branch at `lr`, the rest at `lr_global`."""
    if model.local_branch is None:
        return [{"params": list(model.parameters()), "lr": cfg.train.lr, "name": "all"}]
    local = list(model.local_branch.parameters())
    ids = {id(p) for p in local}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [
        {"params": local, "lr": cfg.train.lr, "name": "local"},
        {"params": rest, "lr": cfg.train.lr_global, "name": "global"},
    ]


def init_from(model: ASENPP, path: Path, names: list[str]) -> None:
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


def build_state(
    cfg: Config,
    *,
    stage: int,
    attributes: list[AttributeSpec],
    device: torch.device,
    init: Path | None = None,
    saved: dict | None = None,
) -> TrainState:
    """A fresh state (seeded, optionally initialised from `init`) or the `saved` one. The
    model is on `device` in channels_last (faster convolutions on CPU as on CUDA)."""
    torch.manual_seed(cfg.train.seed)
    model = ASENPP(cfg.model, len(attributes), stage)
    if init is not None and saved is None:
        init_from(model, Path(init), [a.name for a in attributes])
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(param_groups(model, cfg))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.train.lr_step, cfg.train.lr_gamma)
    state = TrainState(cfg, attributes, model, optimizer, scheduler)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        state.epoch, state.step = saved["epoch"], saved["step"]
        state.best_val_map = saved["best_val_map"]
        state.records = list(saved.get("records", []))
    return state


def load_resume_state(folder: RunFolder, *, stage: int) -> dict:
    """The checkpoint to resume from; it must be of the same stage. One written before
    checkpoints carried the metrics records takes the whole records of metrics.jsonl."""
    saved = load_checkpoint(folder.last)
    if saved["stage"] != stage:
        raise AsenError(f"{folder.last}: is a stage-{saved['stage']} run, not stage {stage}")
    if "records" not in saved:
        saved["records"] = folder.read_metrics() if folder.metrics.exists() else []
    return saved


def check_attributes(saved: dict, data: TrainingData, source: Path) -> None:
    """A resumed run's dataset must have the attributes the run was trained on."""
    ours = [(a.name, a.values) for a in checkpoint_attributes(saved)]
    theirs = [(a.name, a.values) for a in data.attributes]
    if ours != theirs:
        show = ", ".join(f"{n} ({v})" for n, v in ours)
        raise AsenError(
            f"{source}: the run was trained on {len(ours)} attributes ({show}); the dataset "
            f"has {len(theirs)} ({', '.join(f'{n} ({v})' for n, v in theirs)})"
        )
