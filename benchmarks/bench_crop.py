"""Benchmark the attention-guided crop: asen's antialiased resize (two interpolation
matrices per sample) against `roi_align` with 2 samples a bin (the earlier crop), and the
box rule, at the synthetic (128 -> 48) and the paper's sizes (448 -> 112), for the 48
images of a 16-triplet step. Variants interleaved; prints one JSON object with medians
(ms) and ratios."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import roi_align

if importlib.util.find_spec("asen") is None:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {"small": (128, 48, 8), "paper": (448, 112, 14)}  # source S, local L, map side


def _roi_align(images: torch.Tensor, boxes: torch.Tensor, out: int) -> torch.Tensor:
    index = torch.arange(len(images), dtype=boxes.dtype).unsqueeze(1)
    rois = torch.cat([index, boxes], dim=1)
    return roi_align(images, rois, (out, out), 1.0, 2, True)


def run(batch: int = 48, rounds: int = 15) -> dict:
    from asen.model.crop import attention_boxes, crop

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
        times: dict[str, list[float]] = {k: [] for k in variants}
        with torch.no_grad():
            for _ in range(rounds):
                for key, fn in variants.items():  # interleaved
                    start = time.perf_counter()
                    fn()
                    times[key].append((time.perf_counter() - start) * 1e3)
        medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
        out[name] = {
            "ms": medians,
            "crop_vs_roi_align": round(medians["crop_matrices"] / medians["roi_align_sr2"], 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(run(args.batch, args.rounds), indent=2))


if __name__ == "__main__":
    main()
