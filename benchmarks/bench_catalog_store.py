"""The catalog store at scale: N items x A attributes x D dims in Milvus Lite (IVF or HNSW).

Measures the load time (`asen catalog load` from Parquet, index build included) and the peak
memory of the process (Milvus Lite runs inside it for a .db store), the time Milvus Lite
goes on merging segments and building their indexes in the background after the load has
returned (the benchmark waits for the process to go idle before it queries), recall@10 of the index
against the exact top 10 (numpy, float64), and p50/p99 latency and throughput at 8 queries in
flight with a filter that keeps about 10% of the items. Then one query's time is split into
the Milvus call (with and without the stored vectors) and asen's exact re-scoring.

The vectors are clustered like real embeddings (a mixture of 512 unit centres per attribute
with noise), not uniform noise, which no index can cluster.

    python -m benchmarks.bench_catalog_store --items 100000 --index hnsw
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from asen.catalog.files import (
    CatalogManifest,
    EncoderIdentity,
    chunk_name,
    embedding_column,
    open_catalog,
)
from asen.catalog.load import load_catalog
from asen.catalog.query import SEARCH_PARAMS, index_search_params, search
from asen.catalog.store import CatalogStore, parse_store
from benchmarks import harness

CATEGORIES = 10  # one category is the ~10% filter
CHUNK = 50_000
IN_FLIGHT_NOTE = (
    "{in_flight} in flight, each filtered to one category of ten (about 10% of the items); "
    "Milvus Lite in the benchmark's process"
)


def clustered(rng, n: int, attributes: int, dim: int) -> np.ndarray:
    """Unit vectors `[n, A, D]` around 512 centres per attribute."""
    centres = rng.standard_normal((attributes, 512, dim)).astype(np.float32)
    out = np.empty((n, attributes, dim), np.float32)
    for a in range(attributes):
        pick = rng.integers(0, 512, n)
        out[:, a] = centres[a, pick] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=2, keepdims=True)
    return out


def write_catalog(folder: Path, vectors: np.ndarray, category: np.ndarray) -> None:
    n, attributes, dim = vectors.shape
    names = [f"attr{a}" for a in range(attributes)]
    chunks = []
    for c, start in enumerate(range(0, n, CHUNK)):
        part = slice(start, start + CHUNK)
        columns = {
            "id": pa.array(np.arange(n)[part], pa.int64()),
            "category": pa.array([f"c{v}" for v in category[part]], pa.string()),
        }
        for a, name in enumerate(names):
            flat = pa.array(np.ascontiguousarray(vectors[part, a]).reshape(-1), pa.float32())
            columns[embedding_column(name)] = pa.FixedSizeListArray.from_arrays(flat, dim)
        (folder / chunk_name(0, 1, c)).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), folder / chunk_name(0, 1, c))
        chunks.append(chunk_name(0, 1, c))
    identity = EncoderIdentity("0" * 64, "fp32", "all", "bench")
    CatalogManifest(identity, names, dim, "id", "int64", {"category": "string"}, "0" * 64, 1,
                    chunks, n).save(folder)  # fmt: skip


def settle(max_s: float = 3600.0, idle_percent: float = 15.0) -> float:
    """Wait until this process is idle (Milvus Lite, in it, keeps merging segments and
    building their indexes in a background thread after the load returns); seconds waited.
    Queries timed before that would share the CPU with the rebuilds."""
    me, start = psutil.Process(), time.monotonic()
    while time.monotonic() - start < max_s:
        if me.cpu_percent(interval=3.0) < idle_percent:
            break
    return round(time.monotonic() - start, 1)


def exact_top(vectors, category, query, weights, k, keep=None) -> list[int]:
    scores = np.zeros(len(vectors))
    for a, w in weights.items():
        scores += w * (vectors[:, a].astype(np.float64) @ query[a].astype(np.float64))
    if keep is not None:
        scores[category != keep] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:k].tolist()


def queries(rng, vectors, count: int) -> list[tuple[np.ndarray, dict[int, float], int | None]]:
    """Photo-like queries (a perturbed catalog vector), one attribute or a weighted pair,
    half of them filtered to one category."""
    out = []
    attributes = vectors.shape[1]
    for q in range(count):
        base = vectors[rng.integers(len(vectors))] + 0.3 * rng.standard_normal(vectors.shape[1:])
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        a = q % attributes
        weights = {a: 1.0} if q % 2 else {a: 1.0, (a + 1) % attributes: 0.5}
        out.append(
            (base.astype(np.float32), weights, int(rng.integers(CATEGORIES)) if q % 4 < 2 else None)
        )
    return out


def run_query(store, query, names, k=10, tuning=None):
    vectors, weights, keep = query
    spec = {"category": f"c{keep}"} if keep is not None else None
    named = {names[a]: w for a, w in weights.items()}
    return search(store, weights=named, k=k, vectors=vectors, filter=spec, tuning=tuning)


def recall_by_ef(store, vectors, category, tests, names, efs: list[int]) -> dict:
    """Recall@10 against exact search and the median query time, with the default search
    parameters ("default") and at each HNSW ef in `efs` ("ef 512"), interleaved query by
    query."""
    tunings = {"default": None, **{f"ef {ef}": {"ef": ef} for ef in efs}}
    found = dict.fromkeys(tunings, 0)
    times: dict[str, list[float]] = {label: [] for label in tunings}
    for query in tests:
        exact = set(exact_top(vectors, category, query[0], query[1], 10, query[2]))
        for label, tuning in tunings.items():
            start = time.perf_counter()
            hits = run_query(store, query, names, tuning=tuning)
            times[label].append(time.perf_counter() - start)
            found[label] += len(exact & {int(h.id) for h in hits})
    return {
        label: {
            "recall_at_10": round(found[label] / (10 * len(tests)), 4),
            "query_ms": round(1000 * statistics.median(times[label]), 1),
        }
        for label in tunings
    }


def latency(address, tests, names, in_flight: int, seconds: float) -> dict:
    """Filtered queries from `in_flight` clients for `seconds`: p50, p99, queries/s."""
    filtered = [t for t in tests if t[2] is not None]
    times: list[float] = []
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        with CatalogStore.open(address) as store:
            i = seed
            while time.monotonic() < stop:
                start = time.perf_counter()
                run_query(store, filtered[i % len(filtered)], names)
                times.append(time.perf_counter() - start)
                i += in_flight

    began = time.monotonic()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(client, range(in_flight)))
    elapsed = time.monotonic() - began
    ms = sorted(t * 1000 for t in times)
    return {
        "queries": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
        "qps": round(len(ms) / elapsed, 1),
    }


def breakdown(store, tests, names) -> dict:
    """One filtered query at a time: the Milvus call alone (ids only, then with vectors)
    and asen's whole query (re-scoring included), in ms."""
    filtered = [t for t in tests if t[2] is not None][:20]
    params = index_search_params(store.layout.index, limit=19)
    out = {}
    for label, fields in (("milvus_ids_ms", []), ("milvus_with_vectors_ms", ["vec"])):
        times = []
        for vectors, weights, keep in filtered:
            flat = np.zeros_like(vectors)
            for a, w in weights.items():
                flat[a] = w * vectors[a]
            start = time.perf_counter()
            store.client.search(store.collection, [flat.reshape(-1).tolist()], limit=19,
                                filter=f'category == "c{keep}"', output_fields=fields,
                                search_params=params)  # fmt: skip
            times.append(time.perf_counter() - start)
        out[label] = round(1000 * statistics.median(times), 1)
    times = []
    for query in filtered:
        start = time.perf_counter()
        run_query(store, query, names)
        times.append(time.perf_counter() - start)
    out["asen_query_ms"] = round(1000 * statistics.median(times), 1)
    return out


FIGURE_COLUMNS = {
    "index": "index",
    "load_s": "load s",
    "settle_s": "background merge s",
    "peak_rss_gib": "peak RSS GiB",
    "recall_at_10": "recall@10",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "qps": "queries/s",
    "milvus_ids_ms": "one query: Milvus, ids only, ms",
    "milvus_with_vectors_ms": "one query: Milvus, with vectors, ms",
    "asen_query_ms": "one query: asen, ms",
}


def ef_notes(result: dict) -> list[str]:
    """HNSW only: recall@10 and one query's median time at each ef measured."""
    if result["index"] != "hnsw":
        return []
    default = f"ef {SEARCH_PARAMS['hnsw']['ef']} (the default, the row above)"
    return [
        f"{default if label == 'default' else label}: recall@10 {row['recall_at_10']}, "
        f"one query {row['query_ms']} ms"
        for label, row in result["by_ef"].items()
    ]


def to_figures(result: dict) -> harness.Figures:
    """One row: the store's load, memory, recall and latency at this size."""
    values = {**result, **result["one_query"]}
    return harness.Figures(
        title=f"Catalog store (Milvus Lite): {result['items']:,} x {result['attributes']} x "
        f"{result['dim']}, {result['index']}",
        columns=list(FIGURE_COLUMNS.values()),
        rows=[[values[key] for key in FIGURE_COLUMNS]],
        notes=[
            f"{result['queries']} queries at {IN_FLIGHT_NOTE.format(**result)}",
            f"load average {result['load_average']} on a shared 2-core machine",
            *ef_notes(result),
        ],
    )


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--attributes", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--index", choices=["ivf", "hnsw", "flat"], default="hnsw")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--store", help="a .db path or a server URI (default: a temporary file)")
    parser.add_argument(
        "--ef", default="", help="more HNSW ef values to measure recall at, e.g. 256,512,2048"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = clustered(rng, args.items, args.attributes, args.dim)
    category = rng.integers(0, CATEGORIES, args.items)
    names = [f"attr{a}" for a in range(args.attributes)]
    efs = [int(v) for v in args.ef.split(",") if v] if args.index == "hnsw" else []
    with tempfile.TemporaryDirectory() as tmp:
        write_catalog(Path(tmp) / "catalog", vectors, category)
        address = parse_store(args.store or str(Path(tmp) / "bench.db"))
        with harness.PeakMemory() as memory:
            start = time.perf_counter()
            load_catalog(open_catalog(Path(tmp) / "catalog"), address, index=args.index,
                         batch_size=2048)  # fmt: skip
            load_s = time.perf_counter() - start
            settle_s = settle()
        tests = queries(rng, vectors, args.queries)
        with CatalogStore.open(address) as store:
            result = {
                "items": args.items, "attributes": args.attributes, "dim": args.dim,
                "index": args.index, "load_s": round(load_s, 1), "settle_s": settle_s,
                "peak_rss_gib": round(memory.peak / 2**30, 2),
                "by_ef": recall_by_ef(store, vectors, category, tests, names, efs),
                **latency(address, tests, names, args.in_flight, args.seconds),
                "one_query": breakdown(store, tests, names), "in_flight": args.in_flight,
            }  # fmt: skip
    result["recall_at_10"] = result["by_ef"]["default"]["recall_at_10"]
    result["load_average"] = harness.load_average()
    harness.finish(result, args, to_figures, indent=1)


if __name__ == "__main__":
    main()
