"""Benchmark served search at gallery scale: per attribute, ITEMS l2-normalised 256-d vectors
with embedding-like statistics, indexed the way `asen index` does (exact flat, IVF with
nlist ~ sqrt(N)) and with compressed vectors (IVF-SQ8, IVF-PQ: the memory-saving
variants), then searched one query at a time for the top 10 with nprobe per request.

Reports per index kind: build time, index memory (bytes held by FAISS, and the process's
peak RSS), recall@10 against exact search and p50/p99 latency of the index part
(`SearchIndex.search`, what `asen_search` runs after the encoder), nprobe values
interleaved query by query, and IVF at 8 queries in flight. With --served it also builds a
model repository (--repo's encoder, else a random `small` model) whose `asen_search` holds
an IVF gallery of --served-items per attribute, serves it with tritonserver and measures
`asen_search` end to end (image bytes in, top 10 out: decoding, the encoder through BLS,
the index) with perf_analyzer at concurrency 1 and 8.

Gallery statistics: CLUSTERS centres drawn at random on the sphere, cluster sizes Zipf-like
(a few large, many small), items at cosine ~0.7 from their centre with per-cluster spread;
queries are fresh draws from the same clusters (not in the gallery). Prints one JSON object.

    python -m benchmarks.bench_search_served --items 100000           # quick
    python -m benchmarks.bench_search_served --items 1000000 --served  # full
"""

from __future__ import annotations

import gc
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from asen import AsenError
from asen.atomic import atomic_write_text
from asen.evaluate import EmbeddedSplit
from asen.search import KMEANS_ITERATIONS, SearchIndex
from benchmarks import harness

TOP, DIM, CLUSTERS = 10, 256, 1000


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


class Gallery:
    """Clustered, l2-normalised vectors: one attribute's embedding space."""

    def __init__(self, seed: int, dim: int = DIM, clusters: int = CLUSTERS):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = _normalise(rng.standard_normal((clusters, dim), dtype=np.float32))
        weights = 1.0 / np.arange(1, clusters + 1) ** 0.5  # Zipf-like cluster sizes
        self.weights = weights / weights.sum()
        self.spread = rng.uniform(0.8, 1.2, clusters).astype(np.float32)
        self.rng = rng

    def draw(self, n: int, chunk: int = 200_000) -> np.ndarray:
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            own = self.rng.choice(len(self.centres), m, p=self.weights)
            noise = _normalise(self.rng.standard_normal((m, self.dim), dtype=np.float32))
            out[start : start + m] = self.centres[own] + noise * self.spread[own, None]
        return _normalise(out)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _split(emb: np.ndarray):
    n = len(emb)
    return EmbeddedSplit(
        embeddings=emb,
        image_ids=np.arange(n, dtype=np.int64),
        attributes=np.zeros(n, np.int64),
        values=np.zeros(n, np.int64),
        is_query=np.zeros(n, bool),
        paths=[f"items/{i}.jpg" for i in range(n)],
    )


def _faiss_bytes(index) -> int:
    """Bytes FAISS holds for an index: vectors or codes, ids and the coarse centroids."""
    if isinstance(index, faiss.IndexFlat):
        return index.ntotal * index.code_size
    ivf = faiss.extract_index_ivf(index)
    return ivf.ntotal * (ivf.code_size + 8) + ivf.nlist * ivf.d * 4


def _compressed(emb: np.ndarray, kind: str, nlist: int):
    """IVF with compressed vectors, same nlist as IVF: `pq<m>` (m sub-quantisers of 8 bits,
    m bytes a vector) or `sq8` (8-bit scalar quantiser, one byte a dimension)."""
    d, quantizer = emb.shape[1], faiss.IndexFlatIP(emb.shape[1])
    if kind == "sq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFPQ(quantizer, d, nlist, int(kind[2:]), 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.train(emb[: 256 * nlist])
    index.add(emb)
    return index


def bench_compressed(emb, queries, truth, kind: str, nlist: int, nprobes: list[int]) -> dict:
    """Build time, bytes, recall@10 and latency of one compressed IVF variant."""
    start = time.perf_counter()
    index = _compressed(emb, kind, nlist)
    build_s = time.perf_counter() - start

    def search(q, p):
        _, found = index.search(q[None], TOP, params=faiss.SearchParametersIVF(nprobe=p))
        return found[0].tolist()

    runs = _timed_searches(search, queries, nprobes)
    return {
        "nlist": nlist,
        "build_s": round(build_s, 2),
        "index_bytes": _faiss_bytes(index),
        "by_nprobe": {
            str(p): {"recall_at_10": round(_recall(ids, truth), 4), **_stats(ms)}
            for p, (ms, ids) in runs.items()
        },
    }


def _timed_searches(search, queries: np.ndarray, variants: list) -> dict:
    """Latency and ids per variant, the variants interleaved query by query (rotated)."""
    times = {v: [] for v in variants}
    ids = {v: [] for v in variants}
    for v in variants:
        search(queries[0], v)  # warm-up
    for i, q in enumerate(queries):
        for j in range(len(variants)):
            v = variants[(i + j) % len(variants)]
            start = time.perf_counter()
            found = search(q, v)
            times[v].append(time.perf_counter() - start)
            ids[v].append(found)
    return {v: (np.asarray(times[v]) * 1e3, ids[v]) for v in variants}


def _concurrent(search, queries: np.ndarray, workers: int) -> dict:
    """p50/p99 of each query's latency with `workers` queries in flight at all times."""
    from concurrent.futures import ThreadPoolExecutor

    def timed(q):
        start = time.perf_counter()
        search(q)
        return time.perf_counter() - start

    with ThreadPoolExecutor(workers) as pool:
        ms = np.asarray(list(pool.map(timed, queries))) * 1e3
    return _stats(ms)


def _recall(found: list, exact: list) -> float:
    return float(np.mean([len(set(f) & set(e)) / TOP for f, e in zip(found, exact, strict=True)]))


def _stats(ms: np.ndarray) -> dict:
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def bench_attribute(attribute: int, args) -> dict:
    """Build flat, IVF and compressed IVF over one attribute's gallery; recall, latency."""
    gallery = Gallery(seed=attribute, dim=args.dim)
    emb = gallery.draw(args.items)
    queries = gallery.draw(args.queries)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(emb)
    start = time.perf_counter()
    _, truth = exact.search(queries, TOP)
    exact_ms = (time.perf_counter() - start) * 1e3 / len(queries)
    exact_bytes = _faiss_bytes(exact)
    del exact
    gc.collect()
    out = {"exact": {"batched_ms_per_query": round(exact_ms, 2), "index_bytes": exact_bytes}}

    rss0, start = _rss_mb(), time.perf_counter()
    ivf = SearchIndex.build(_split(emb), ["attr"], ivf=True, nprobe=args.nprobe[0])
    build_s = time.perf_counter() - start
    nlist = ivf.manifest["nlist"][0]
    runs = _timed_searches(
        lambda q, p: [h.image_id for h in ivf.search(q, 0, TOP, p)], queries, args.nprobe
    )
    out["ivf"] = {
        "nlist": nlist,
        "build_s": round(build_s, 2),
        "index_bytes": _faiss_bytes(ivf._indexes[0]),
        "peak_rss_mb_before_after": [round(rss0), round(_rss_mb())],
        "by_nprobe": {
            str(p): {"recall_at_10": round(_recall(ids, truth.tolist()), 4), **_stats(ms)}
            for p, (ms, ids) in runs.items()
        },
    }
    out["ivf"]["concurrency_8_default_nprobe"] = _concurrent(
        lambda q: ivf.search(q, 0, TOP, args.nprobe[0]), np.tile(queries, (4, 1)), 8
    )
    ivf = None  # free it before building the next
    gc.collect()
    for kind in args.compressed:
        out[f"ivf{kind}"] = bench_compressed(emb, queries, truth.tolist(), kind, nlist, args.nprobe)
        gc.collect()
    return out


def _perf_analyzer() -> str | None:
    """NVIDIA's perf_analyzer: $ASEN_PERF_ANALYZER, scripts/install_perf_analyzer.sh's
    .venv-perf/perf_analyzer, or PATH."""
    import shutil

    local = Path(__file__).resolve().parents[1] / ".venv-perf" / "perf_analyzer"
    for candidate in (
        os.environ.get("ASEN_PERF_ANALYZER"),
        str(local),
        shutil.which("perf_analyzer"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _export_random_model(root: Path, attributes: int) -> Path:
    """A randomly initialised `small` stage-2 model exported to `root/models`."""
    import torch
    from asen.export.build import export_model

    from asen.checkpoint import atomic_save, make_checkpoint
    from asen.config import AttributeSpec, load_config
    from asen.model.asen import ASENPP

    specs = [AttributeSpec(f"attr{i}", 4) for i in range(attributes)]
    torch.manual_seed(0)
    cfg = load_config(["small"], ["model.threshold=0.8"])
    atomic_save(make_checkpoint(ASENPP(cfg.model, len(specs), 2), cfg, specs), root / "model.pt")
    export_model(root / "model.pt", root / "models", max_batch=16)
    return root / "models"


def _served_repo(root: Path, args) -> tuple[Path, bytes, str]:
    """A model repository (a copy of --repo, else a random `small` model) with an
    asen_search over a synthetic IVF gallery in its embedding space. Returns the
    repository, a query image and an attribute name."""
    import shutil

    from asen.export.search_model import SEARCH_MODEL, add_search_model, encoder_identity

    from asen.data.synthetic import generate

    if args.repo:
        repo = root / "models"
        shutil.copytree(args.repo, repo, ignore=shutil.ignore_patterns(SEARCH_MODEL, "*.log"))
    else:
        repo = _export_random_model(root, args.attributes)
    identity = encoder_identity(repo, "asen_onnx")
    names = str(identity["attribute_names"]).split(",")
    dim, items = int(identity["embedding_dim"]), args.served_items
    split = _split(
        np.concatenate([Gallery(seed=a, dim=dim).draw(items) for a in range(len(names))])
    )
    split.attributes = np.repeat(np.arange(len(names)), items)
    index = SearchIndex.build(split, names, ivf=True, nprobe=args.nprobe[0])
    # synthetic vectors stand in for a gallery this encoder embedded: recorded as its own
    index.manifest["encoder"] = identity
    add_search_model(repo, index, "asen_onnx")
    generate(root / "synth", seed=0, n_train=10, n_eval=10)
    image = sorted((root / "synth" / "images" / "test").iterdir())[0].read_bytes()
    return repo, image, names[0]


def _counts(url: str) -> dict[str, tuple[int, int]]:
    """(inferences, executions) so far of asen_search and its encoder, from Triton."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    return {
        m["name"]: (int(m.get("inference_count", 0)), int(m.get("execution_count", 0)))
        for m in stats
        if m["name"] in ("asen_search", "asen_onnx")
    }


def _batching(before: dict, after: dict) -> dict:
    """Queries (images) per execution of asen_search and of the encoder during a run: above
    1 where queries were batched."""
    out = {}
    for name, key in (("asen_search", "search"), ("asen_onnx", "encoder")):
        inferences = after[name][0] - before[name][0]
        executions = after[name][1] - before[name][1]
        out[f"{key}_per_execution"] = round(inferences / max(1, executions), 2)
    return out


def _perf_run(binary: str, url: str, root: Path, concurrency: int, args) -> dict:
    """One perf_analyzer measurement of asen_search over gRPC at `concurrency`."""
    import subprocess

    csv = root / f"perf_c{concurrency}.csv"
    run = subprocess.run(
        [
            binary,
            "-m",
            "asen_search",
            "-u",
            url,
            "-i",
            "grpc",
            "--input-data",
            str(root / "input.json"),
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            "--measurement-interval",
            str(args.measurement_ms),
            "--stability-percentage",
            str(args.stability),
            "--percentile",
            "99",
            "-f",
            str(csv),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0:
        return {"error": run.stderr.strip()[-500:]}
    header, row = csv.read_text().splitlines()[:2]
    fields = dict(zip(header.split(","), row.split(","), strict=False))
    return {
        "queries_per_s": float(fields["Inferences/Second"]),
        "p50_ms": int(fields["p50 latency"]) / 1e3,
        "p99_ms": int(fields["p99 latency"]) / 1e3,
    }


def bench_served(args, root: Path) -> dict:
    """asen_search end to end under perf_analyzer (gRPC), concurrency 1 and 8."""
    import base64
    import struct

    from asen.client.server import free_ports, start_server

    binary = _perf_analyzer()
    if binary is None:
        return {"skipped": "perf_analyzer not found (bash scripts/install_perf_analyzer.sh)"}
    start = time.perf_counter()
    repo, image, attribute = _served_repo(root, args)
    build_s = time.perf_counter() - start
    blob = struct.pack("<I", len(image)) + image
    data = {
        "data": [
            {
                # BYTES in b64 are Triton's serialised form: a 4-byte length, then the bytes
                "image_bytes": {"b64": base64.b64encode(blob).decode(), "shape": [1]},
                "attribute": [attribute],
                "k": [TOP],
                "nprobe": [args.nprobe[0]],
            }
        ]
    }
    (root / "input.json").write_text(json.dumps(data))
    ports = free_ports()
    out = {"items_per_attribute": args.served_items, "repository_build_s": round(build_s, 1)}
    with start_server(repo, log_file=root / "triton.log", **ports) as server:
        for concurrency in (1, 8):
            before = _counts(server.grpc_url)
            out[f"concurrency_{concurrency}"] = {
                **_perf_run(binary, server.grpc_url, root, concurrency, args),
                **_batching(before, _counts(server.grpc_url)),
            }
    return out


def _parser():
    parser = harness.parser(__doc__)
    parser.add_argument("--items", type=int, default=1_000_000, help="gallery items per attribute")
    parser.add_argument("--attributes", type=int, default=4)
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--nprobe",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[16, 8, 32, 64],
        help="first: the index default",
    )
    parser.add_argument(
        "--compressed",
        type=lambda s: [v for v in s.split(",") if v],
        default=["sq8", "pq32"],
        help="compressed IVF variants: sq8, pq<m> (m bytes a vector); '' for none",
    )
    parser.add_argument(
        "--served", action="store_true", help="also asen_search under perf_analyzer"
    )
    parser.add_argument("--served-items", type=int, default=None, help="default: --items")
    parser.add_argument("--repo", type=Path, help="served: this exported model (default: random)")
    parser.add_argument("--measurement-ms", type=int, default=5000)
    parser.add_argument(
        "--stability", type=int, default=10, help="perf_analyzer --stability-percentage"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    return parser


def figures(result: dict) -> harness.Figures:
    """One row per attribute, index kind and nprobe; the served figures in the notes."""
    rows = []
    for attribute, found in result["attributes"].items():
        for kind, index in found.items():
            if kind == "exact":
                continue
            for nprobe, row in index["by_nprobe"].items():
                mib = round(index["index_bytes"] / 2**20, 1)
                rows.append(
                    [
                        attribute,
                        kind,
                        index["nlist"],
                        int(nprobe),
                        row["recall_at_10"],
                        row["p50_ms"],
                        row["p99_ms"],
                        index["build_s"],
                        mib,
                    ]
                )
    columns = [
        "attribute",
        "index",
        "nlist",
        "nprobe",
        "recall@10",
        "p50 (ms)",
        "p99 (ms)",
        "build (s)",
        "index MiB",
    ]
    notes = [
        f"{result['items_per_attribute']} items of {result['dim']} dimensions per attribute, "
        f"{result['queries']} queries one at a time, top {TOP}; recall against exact search"
    ]
    if "served" in result:
        notes.append(f"asen_search served (perf_analyzer, gRPC): {json.dumps(result['served'])}")
    return harness.Figures("Search at gallery scale (IVF and compressed IVF)", columns, rows, notes)


def main() -> None:
    args = _parser().parse_args()
    args.served_items = args.served_items or args.items
    result = {
        "items_per_attribute": args.items,
        "dim": args.dim,
        "queries": args.queries,
        "load_average_start": os.getloadavg(),
        "attributes": {},
    }
    for a in range(args.attributes):
        result["attributes"][f"attr{a}"] = bench_attribute(a, args)
        gc.collect()
    if args.served:
        with tempfile.TemporaryDirectory(prefix="asen-bench-") as tmp:
            try:
                result["served"] = bench_served(args, Path(tmp))
            except AsenError as e:  # keep the index figures; say why the rest is missing
                result["served"] = {"error": str(e)}
    result["load_average_end"] = os.getloadavg()
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    harness.finish(result, args, figures, indent=2)


if __name__ == "__main__":
    main()
