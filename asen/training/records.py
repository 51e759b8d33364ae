"""The metrics record: one JSON object per epoch (or partial epoch) in metrics.jsonl and
in the checkpoint."""

from __future__ import annotations

from asen.evaluate import EvalResult
from asen.training.epoch import EpochTally

LOSSES = {1: ("loss", "loss_global"), 2: ("loss", "loss_global", "loss_local", "loss_align")}


def make_record(
    tally: EpochTally,
    *,
    epoch: int,
    partial: bool,
    stage: int,
    lrs: dict[str, float],
    val: EvalResult,
    elapsed_s: float,
) -> dict:
    """The record of epoch `epoch` (1-based); `partial` when the run stopped inside it.
    Every field but the timings (triplets_per_s, data_wait_s, elapsed_s) is the same in a
    run interrupted and resumed as in one that was not."""
    means = tally.means()
    return {
        "epoch": epoch,
        "partial": partial,
        "stage": stage,
        "steps": tally.steps,
        "triplets": tally.seen,
        "skipped_images": tally.skipped,
        **{k: means.get(k, 0.0) for k in LOSSES[stage]},
        "lr": lrs,
        "triplets_per_s": tally.seen / max(tally.seconds, 1e-9),
        "data_wait_s": tally.data_wait_s,
        "val_map": val.overall_map,
        "val_per_attribute": val.per_attribute,
        "elapsed_s": elapsed_s,
    }
