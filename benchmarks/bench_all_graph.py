"""The all-attributes graph against eight pair passes, on ONNX Runtime fp32.

A random stage-1 and stage-2 model with 8 attributes is exported twice (`export_onnx`):
the pair graph (image, attribute -> embedding) and the all-attributes graph (image ->
every attribute's embedding). Per round, a batch of images is embedded for all 8
attributes by each: eight pair passes (one per attribute) against one all-attributes
pass, interleaved so that other work on the machine slows both alike. Reports the median
seconds and the median per-round speed-up, and checks that the embeddings are equal
(max abs difference, min cosine).

    python -m benchmarks.bench_all_graph --size paper --figures docs/figures/all-graph.json
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from asen.export.onnx import export_onnx, session
from asen.export.verify import compare

from asen.config import AttributeSpec, load_config
from asen.model.asen import ASENPP
from asen.model.shape import ModelInfo
from benchmarks.harness import Figures, finish, interleaved, load_average, median, parser
from benchmarks.models import CONFIGS

ATTRIBUTES = [AttributeSpec(f"attr{i}", 4) for i in range(8)]


def _graphs(size: str, stage: int, folder: Path) -> tuple[Path, Path, ModelInfo]:
    cfg = load_config(CONFIGS[size])
    torch.manual_seed(0)
    model = ASENPP(cfg.model, len(ATTRIBUTES), stage).eval()
    info = ModelInfo.from_config(cfg.model, ATTRIBUTES, stage)
    pair, every = folder / f"{size}{stage}_pair.onnx", folder / f"{size}{stage}_all.onnx"
    export_onnx(model, info, pair, 64)
    export_onnx(model, info, every, 64, graph="all")
    return pair, every, info


def measure(size: str, stage: int, *, batch: int, rounds: int, folder: Path) -> dict:
    """Seconds to embed `batch` images for all 8 attributes, each way, and their parity."""
    pair_path, all_path, info = _graphs(size, stage, folder)
    pair, every = session(pair_path, "cpu"), session(all_path, "cpu")
    s, count = info.source_size, len(ATTRIBUTES)
    images = np.random.default_rng(0).integers(0, 256, (batch, 3, s, s), dtype=np.uint8)

    def pairs() -> np.ndarray:
        out = [
            pair.run(["embedding"], {"image": images, "attribute": np.full(batch, a)})[0]
            for a in range(count)
        ]
        return np.stack(out, axis=1)

    def together() -> np.ndarray:
        return every.run(["embedding"], {"image": images})[0]

    parity = compare(pairs().reshape(-1, info.dim), together().reshape(-1, info.dim))
    times = interleaved({"pairs": pairs, "all": together}, rounds)
    ratios = [p / a for p, a in zip(times["pairs"], times["all"], strict=True)]
    return {
        "size": size,
        "stage": stage,
        "images": batch,
        "attributes": count,
        "pairs_s": median(times["pairs"], 3),
        "all_s": median(times["all"], 3),
        "speedup": median(ratios, 2),
        "max_abs_diff": float(f"{parity.max_abs_diff:.3g}"),
        "min_cosine": round(parity.min_cosine, 8),
    }


def to_figures(result: dict) -> Figures:
    rows = [
        [
            r["size"],
            r["stage"],
            r["images"],
            r["pairs_s"],
            r["all_s"],
            r["speedup"],
            r["min_cosine"],
        ]
        for r in result["runs"]
    ]
    return Figures(
        title="All-attributes graph vs eight pair passes (ONNX Runtime fp32, 8 attributes)",
        columns=[
            "size",
            "stage",
            "images",
            "8 pair passes (s)",
            "all graph (s)",
            "speed-up",
            "min cosine",
        ],  # fmt: skip
        rows=rows,
        notes=[f"load average {result['load_average']} on a shared machine; interleaved rounds"],
    )


def main() -> None:
    args_parser = parser(__doc__)
    args_parser.add_argument("--size", choices=sorted(CONFIGS), default="paper")
    args_parser.add_argument("--stages", default="1,2")
    args_parser.add_argument("--batch", type=int, default=4)
    args_parser.add_argument("--rounds", type=int, default=3)
    args = args_parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs = [
            measure(
                args.size, int(stage), batch=args.batch, rounds=args.rounds, folder=Path(folder)
            )
            for stage in args.stages.split(",")
        ]
    finish({"runs": runs, "load_average": load_average()}, args, to_figures, indent=1)


if __name__ == "__main__":
    main()
