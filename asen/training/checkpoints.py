"""Checkpointing: best.pt, then last.pt, each written atomically. last.pt is the single
source of truth of a run: it carries every metrics record so far, and metrics.jsonl is
rewritten from it after every save and on resume."""

from __future__ import annotations

from pathlib import Path

import torch

from asen.atomic import atomic_write
from asen.checkpoint import make_checkpoint
from asen.training.faults import fault_point
from asen.training.run_folder import RunFolder
from asen.training.setup import TrainState


def save_file(ckpt: dict, path: Path, *, point: str) -> None:
    """torch.save through asen.atomic (temporary beside `path`, fsync, rename)."""

    def write(fh) -> None:
        torch.save(ckpt, fh)
        fault_point(point)

    atomic_write(path, write)


def save_run(folder: RunFolder, state: TrainState, *, improved: bool) -> None:
    """Save the state after an epoch (or a partial one) and bring metrics.jsonl in step.

    The order makes a kill -9 anywhere harmless: best.pt first (a kill before last.pt is
    renamed redoes the epoch and rewrites the same best.pt), then last.pt (the resume
    point, holding every record), then metrics.jsonl (rewritten from the records on the
    next start if the kill came before it)."""
    ckpt = make_checkpoint(
        state.model,
        state.cfg,
        state.attributes,
        epoch=state.epoch,
        step=state.step,
        optimizer=state.optimizer.state_dict(),
        scheduler=state.scheduler.state_dict(),
        torch_rng=torch.get_rng_state(),
        best_val_map=state.best_val_map,
        val_map=state.records[-1]["val_map"],
        records=state.records,
    )
    if improved:
        save_file(ckpt, folder.best, point="best")
    save_file(ckpt, folder.last, point="last")
    fault_point("saved")
    folder.write_metrics(state.records)
