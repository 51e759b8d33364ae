"""Catalogs written straight in the file format (docs/architecture.md, "Catalog files"),
and the numpy brute force the store's ranking must equal."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from asen import AsenError
from asen.catalog.files import CatalogManifest, EncoderIdentity, chunk_name, embedding_column
from asen.catalog.store import connect, parse_store

ATTRIBUTES = ["collar design", "sleeve_length", "coat-length", "neck"]
CATEGORIES = ["dress", "skirt", "coat", 'it\'s "odd"\\']
IDENTITY = EncoderIdentity("a" * 64, "fp32", "all", "0.2.0")
OTHER_IDENTITY = EncoderIdentity("b" * 64, "fp32", "all", "0.2.0")
SERVER = shutil.which("milvus-lite") or str(Path(sys.executable).parent / "milvus-lite")


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def make_items(n: int, *, dim: int = 16, seed: int = 0, duplicates: int = 0) -> dict:
    """Ids, metadata and unit vectors `[n, A, dim]`; the last `duplicates` items copy the
    vectors of the first ones, so exact ties occur."""
    rng = np.random.default_rng(seed)
    vectors = unit(rng.standard_normal((n, len(ATTRIBUTES), dim)))
    if duplicates:
        vectors[n - duplicates :] = vectors[:duplicates]
    return {
        "id": [f"item{i:06d}" for i in range(n)],
        "category": [CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), n)],
        "price": np.round(rng.uniform(1, 100, n), 2),
        "stock": rng.integers(0, 50, n),
        "sale": rng.random(n) < 0.3,
        "vectors": vectors,
    }


def items_table(items: dict, start: int = 0, stop: int | None = None) -> pa.Table:
    part = slice(start, stop)
    vectors = items["vectors"][part]
    dim = vectors.shape[2]
    columns = {
        "id": pa.array(items["id"][part], pa.string()),
        "category": pa.array(items["category"][part], pa.string()),
        "price": pa.array(items["price"][part], pa.float64()),
        "stock": pa.array(items["stock"][part], pa.int64()),
        "sale": pa.array(items["sale"][part], pa.bool_()),
    }
    for a, name in enumerate(ATTRIBUTES):
        flat = pa.array(np.ascontiguousarray(vectors[:, a]).reshape(-1), pa.float32())
        columns[embedding_column(name)] = pa.FixedSizeListArray.from_arrays(flat, dim)
    return pa.table(columns)


def write_catalog(
    folder: Path, items: dict, *, identity: EncoderIdentity = IDENTITY, chunk: int = 5000
) -> Path:
    """A one-part catalog of `items` in chunks of `chunk` rows."""
    n = len(items["id"])
    chunks = []
    for c, start in enumerate(range(0, n, chunk)):
        name = chunk_name(0, 1, c)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(items_table(items, start, start + chunk), folder / name)
        chunks.append(name)
    manifest = CatalogManifest(
        encoder=identity,
        attributes=ATTRIBUTES,
        dim=items["vectors"].shape[2],
        id_column="sku",
        id_type="string",
        metadata={"category": "string", "price": "double", "stock": "int64", "sale": "bool"},
        items_sha256="0" * 64,
        shards=1,
        chunks=chunks,
        rows=n,
    )
    manifest.save(folder)
    return folder


def brute_force(
    items: dict,
    query: np.ndarray,
    weights: dict[str, float],
    k: int,
    *,
    keep: Callable[[int], bool] = lambda i: True,
    exclude: str | None = None,
) -> list[tuple[str, float]]:
    """The top k by sum w_a cos_a in float64 over the items `keep` passes, ties by id."""
    vectors = items["vectors"].astype(np.float64)
    scores = np.zeros(len(items["id"]))
    for name, weight in weights.items():
        a = ATTRIBUTES.index(name)
        scores += weight * (vectors[:, a] @ query[a].astype(np.float64))
    ranked = sorted(
        (-scores[i], items["id"][i])
        for i in range(len(scores))
        if keep(i) and items["id"][i] != exclude
    )
    return [(item, -neg) for neg, item in ranked[:k]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data: Path, port: int) -> subprocess.Popen:
    """`milvus-lite server` on 127.0.0.1:port, ready when a client connects."""
    command = [SERVER, "server", "--data-dir", str(data), "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            connect(parse_store(f"http://127.0.0.1:{port}"), timeout=2).close()
            return proc
        except AsenError:
            assert proc.poll() is None, "milvus-lite server exited"
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("milvus-lite server did not start in 60 s")
