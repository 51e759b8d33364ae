"""Benchmark attribute-specific search latency (``SearchIndex.search``, the call `asen
search` makes after encoding the query) on a 100,000-item gallery of 2048-d embeddings.

Latency is one query at a time, top 10, encoding excluded. Two galleries, both
l2-normalised float32: `uniform` (random directions: no neighbour structure, the
worst case for any approximate index) and `clustered` (1,000 clusters,
cosine ~0.5 within a cluster, ~0 across, like embeddings a trained model groups). Each is
searched as one attribute's index of 100,000 items (exact flat and IVF) and, exactly, as
one attribute's share of a 100,000-item gallery over 8 attributes (12,500 items).
Recall@10 of IVF is measured against the exact flat result. Prints one JSON object.

    python -m benchmarks.bench_search [--queries 200] [--seed 0] [--figures PATH]
"""

from __future__ import annotations

import os
import time

import faiss
import numpy as np

from asen.evaluate import EmbeddedSplit
from asen.search import SearchIndex
from benchmarks import harness

ITEMS, DIM, TOP, ATTRIBUTES, CLUSTERS = 100_000, 2048, 10, 8, 1000


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _gallery(kind: str, n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    noise = rng.standard_normal((n, DIM), dtype=np.float32)
    if kind == "uniform":
        return _normalise(noise)
    own = centres[rng.integers(0, len(centres), n)]
    return _normalise(own + _normalise(noise))  # cos(item, centre) ~ 0.71


def _index(emb: np.ndarray, ivf: bool, nprobe: int):
    n = len(emb)
    split = EmbeddedSplit(
        embeddings=emb,
        image_ids=np.arange(n, dtype=np.int64),
        attributes=np.zeros(n, np.int64),
        values=np.zeros(n, np.int64),
        is_query=np.zeros(n, bool),
        paths=[],
    )
    start = time.perf_counter()
    index = SearchIndex.build(split, ["attr"], ivf=ivf, nprobe=nprobe)
    return index, time.perf_counter() - start


def _latency(index, queries: np.ndarray, nprobe: int | None) -> tuple[dict, list[list[int]]]:
    index.search(queries[0], 0, TOP, nprobe)  # warm-up
    times, ids = [], []
    for q in queries:
        start = time.perf_counter()
        hits = index.search(q, 0, TOP, nprobe)
        times.append(time.perf_counter() - start)
        ids.append([h.image_id for h in hits])
    ms = np.asarray(times) * 1e3
    stats = {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }
    return stats, ids


def _recall(found: list[list[int]], exact: list[list[int]]) -> float:
    hits = [len(set(f) & set(e)) / TOP for f, e in zip(found, exact, strict=True)]
    return round(float(np.mean(hits)), 3)


def run(queries: int = 200, seed: int = 0, nprobes: tuple[int, ...] = (8, 16, 32)) -> dict:
    rng = np.random.default_rng(seed)
    centres = _normalise(rng.standard_normal((CLUSTERS, DIM), dtype=np.float32))
    results = []
    for kind in ("uniform", "clustered"):
        emb = _gallery(kind, ITEMS, rng, centres)
        q = _gallery(kind, queries, rng, centres)
        flat, build = _index(emb, ivf=False, nprobe=1)
        stats, exact = _latency(flat, q, None)
        row = {"gallery": kind, "index": "flat (exact)", "items_in_index": ITEMS}
        results.append({**row, **stats, "recall_at_10": 1.0, "build_s": round(build, 2)})
        del flat
        share = ITEMS // ATTRIBUTES
        part, build = _index(np.ascontiguousarray(emb[:share]), ivf=False, nprobe=1)
        stats, _ = _latency(part, q, None)
        row = {"gallery": kind, "index": "flat (exact)", "items_in_index": share}
        results.append({**row, **stats, "recall_at_10": 1.0, "build_s": round(build, 2)})
        del part
        ivf, build = _index(emb, ivf=True, nprobe=nprobes[0])
        nlist = ivf.manifest["nlist"][0]
        for nprobe in nprobes:
            stats, found = _latency(ivf, q, nprobe)
            row = {"gallery": kind, "index": f"ivf nlist={nlist} nprobe={nprobe}"}
            results.append(
                {
                    **row,
                    "items_in_index": ITEMS,
                    **stats,
                    "recall_at_10": _recall(found, exact),
                    "build_s": round(build, 2),
                }
            )
        del ivf, emb
    return {
        "benchmark": "search",
        "measures": "SearchIndex.search latency per query (FAISS + result rows), top 10, "
        "one query at a time, query encoding excluded",
        "gallery": f"{ITEMS} items x {DIM}-d float32, l2-normalised; uniform = random "
        f"directions, clustered = {CLUSTERS} clusters (cos ~0.5 within)",
        "items_in_index": f"{ITEMS} = a 100k-item index for one attribute; {ITEMS // ATTRIBUTES}"
        f" = one attribute's index when a 100k gallery spans {ATTRIBUTES} attributes",
        "queries": queries,
        "faiss": faiss.__version__,
        "cpus": os.cpu_count(),
        "results": results,
    }


def figures(result: dict) -> harness.Figures:
    """One row per gallery and index: latency, recall and build time."""
    keys = ["gallery", "index", "items_in_index", "p50_ms", "p99_ms", "recall_at_10", "build_s"]
    columns = [
        "gallery",
        "index",
        "items in index",
        "p50 (ms)",
        "p99 (ms)",
        "recall@10",
        "build (s)",
    ]
    rows = [[row[k] for k in keys] for row in result["results"]]
    notes = [
        result["measures"],
        result["gallery"],
        result["items_in_index"],
        f"{result['queries']} queries, FAISS {result['faiss']}",
    ]
    return harness.Figures("Search latency and recall (SearchIndex)", columns, rows, notes)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    harness.finish(run(args.queries, args.seed), args, figures, indent=2)


if __name__ == "__main__":
    main()
