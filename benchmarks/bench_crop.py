"""Benchmark the attention-guided crop: asen's antialiased resize (two interpolation
matrices per sample) against `roi_align` with 2 samples a bin (the earlier crop), and the
box rule, at the synthetic (128 -> 48) and the paper's sizes (448 -> 112), for the 48
images of a 16-triplet step. Variants interleaved; prints one JSON object with medians
(ms) and ratios.

    python -m benchmarks.bench_crop [--batch 48] [--rounds 15] [--figures PATH]
"""

from __future__ import annotations

import os

import torch
from torchvision.ops import roi_align

from asen.model.crop import attention_boxes, crop
from benchmarks import harness

SIZES = {"small": (128, 48, 8), "paper": (448, 112, 14)}  # source S, local L, map side


def _roi_align(images: torch.Tensor, boxes: torch.Tensor, out: int) -> torch.Tensor:
    index = torch.arange(len(images), dtype=boxes.dtype).unsqueeze(1)
    rois = torch.cat([index, boxes], dim=1)
    return roi_align(images, rois, (out, out), 1.0, 2, True)


def run(batch: int = 48, rounds: int = 15) -> dict:
    torch.manual_seed(0)
    out: dict = {"batch": batch, "threads": torch.get_num_threads(), "load": os.getloadavg()}
    for name, (s, local, side) in SIZES.items():
        images = torch.randn(batch, 3, s, s)
        maps = torch.rand(batch, side, side).softmax(dim=-1)
        boxes = attention_boxes(maps, s // 2, 0.1) * 2
        variants = {
            "crop_matrices": lambda: crop(images, boxes, local),  # noqa: B023
            "roi_align_sr2": lambda: _roi_align(images, boxes, local),  # noqa: B023
            "attention_boxes": lambda: attention_boxes(maps, s // 2, 0.1),  # noqa: B023
        }
        with torch.no_grad():
            times = harness.interleaved(variants, rounds, warmup=0)
        medians = {k: round(harness.median(v) * 1e3, 3) for k, v in times.items()}
        out[name] = {
            "ms": medians,
            "crop_vs_roi_align": round(medians["crop_matrices"] / medians["roi_align_sr2"], 2),
        }
    return out


def figures(result: dict, rounds: int) -> harness.Figures:
    """One row per size: the median milliseconds of each variant and the ratio."""
    rows = [
        [
            f"{name} ({s} -> {local})",
            result[name]["ms"]["crop_matrices"],
            result[name]["ms"]["roi_align_sr2"],
            result[name]["ms"]["attention_boxes"],
            result[name]["crop_vs_roi_align"],
        ]
        for name, (s, local, _) in SIZES.items()
    ]
    columns = [
        "size",
        "crop (ms)",
        "roi_align, 2 samples (ms)",
        "attention boxes (ms)",
        "crop / roi_align",
    ]
    notes = [
        f"{result['batch']} images a call, medians of {rounds} interleaved rounds, "
        f"{result['threads']} torch threads"
    ]
    return harness.Figures("Attention-guided crop", columns, rows, notes)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    result = run(args.batch, args.rounds)
    harness.finish(result, args, lambda r: figures(r, args.rounds), indent=2)


if __name__ == "__main__":
    main()
