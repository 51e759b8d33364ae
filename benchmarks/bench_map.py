"""Benchmark ``asen.metrics.mean_average_precision`` at the FashionAI test size.

3,600 queries x 14,400 candidates over 8 attributes (candidates per attribute = 4x
the queries), D=2048 float32 L2-normalised random embeddings. Prints one JSON object.

    python -m benchmarks.bench_map [--runs 5] [--seed 0] [--figures PATH]
"""

from __future__ import annotations

import numpy as np

from asen.metrics import mean_average_precision
from benchmarks import harness

QUERIES_PER_ATTRIBUTE = [422, 623, 535, 422, 341, 289, 703, 265]
VALUES_PER_ATTRIBUTE = [6, 9, 8, 6, 5, 5, 10, 5]
CANDIDATE_FACTOR = 4
DIM = 2048


def _split(counts: list[int], dim: int, rng: np.random.Generator):
    attr = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    val = np.concatenate(
        [rng.integers(0, VALUES_PER_ATTRIBUTE[a], size=n) for a, n in enumerate(counts)]
    ).astype(np.int64)
    emb = rng.standard_normal((attr.size, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    perm = rng.permutation(attr.size)  # interleave attributes as a real list would
    return emb[perm], attr[perm], val[perm]


def run(runs: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    queries = _split(QUERIES_PER_ATTRIBUTE, DIM, rng)
    cands = _split([CANDIDATE_FACTOR * n for n in QUERIES_PER_ATTRIBUTE], DIM, rng)
    num_attributes = len(QUERIES_PER_ATTRIBUTE)
    calls = {"map": lambda: mean_average_precision(*queries, *cands, num_attributes=num_attributes)}
    times = harness.interleaved(calls, runs, warmup=1)["map"]
    return {
        "benchmark": "map",
        "queries": int(queries[0].shape[0]),
        "candidates": int(cands[0].shape[0]),
        "dim": DIM,
        "median_s": round(harness.median(times), 4),
        "runs_s": [round(t, 4) for t in times],
    }


def figures(result: dict) -> harness.Figures:
    columns = ["queries", "candidates", "dimensions", "median seconds"]
    rows = [[result["queries"], result["candidates"], result["dim"], result["median_s"]]]
    notes = [f"median of {len(result['runs_s'])} timed runs after one warm-up run"]
    return harness.Figures("mAP computation at the FashionAI test size", columns, rows, notes)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    harness.finish(run(args.runs, args.seed), args, figures)


if __name__ == "__main__":
    main()
