"""Writing a catalog into the store and keeping it current: load (an idempotent upsert of
a whole catalog), upsert of embedded rows, delete, stats (docs/catalog-store.md).

Every write goes to a collection with Strong consistency, so a write that returned is
seen by the next query; Milvus logs it before acknowledging it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from asen import AsenError
from asen.catalog.embed import embed_catalog, encoder_identity
from asen.catalog.files import Catalog, CatalogManifest, embedding_column
from asen.catalog.query import field_literal, item_key

if TYPE_CHECKING:
    from asen.catalog.items import Items
    from asen.encoders import Encoder
from asen.catalog.store import (
    DEFAULT_COLLECTION,
    ID_FIELD,
    INDEX_KINDS,
    VECTOR_FIELD,
    CatalogStore,
    StoreAddress,
    StoreLayout,
)

Progress = Callable[[int], None]
DEFAULT_BATCH = 1024


@dataclass
class LoadReport:
    collection: str
    rows: int
    total: int  # rows in the collection afterwards


def layout_of(manifest: CatalogManifest, index: str = "flat") -> StoreLayout:
    """The collection layout a catalog's manifest asks for."""
    if index not in INDEX_KINDS:
        raise AsenError(f"--index {index!r}: expected one of {', '.join(INDEX_KINDS)}")
    return StoreLayout(
        attributes=list(manifest.attributes),
        dim=manifest.dim,
        id_type=manifest.id_type,
        metadata=dict(manifest.metadata),
        encoder=manifest.encoder.to_json(),
        index=index,
    )


def batch_rows(batch: pa.RecordBatch | pa.Table, layout: StoreLayout) -> list[dict[str, Any]]:
    """Catalog rows (the chunk schema) as store rows: id, metadata, concatenated `vec`."""
    names = batch.schema.names
    blocks = []
    for attribute in layout.attributes:
        column = embedding_column(attribute)
        if column not in names:
            raise AsenError(f"catalog rows lack the column {column!r}")
        values = batch.column(names.index(column))
        flat = pa.concat_arrays(values.chunks) if isinstance(values, pa.ChunkedArray) else values
        blocks.append(flat.flatten().to_numpy(zero_copy_only=False).reshape(len(batch), -1))
    vectors = np.hstack(blocks).astype(np.float32, copy=False)
    if vectors.shape[1] != layout.vector_dim or not np.isfinite(vectors).all():
        raise AsenError(f"catalog vectors are not finite [N, {layout.vector_dim}]")
    columns = {name: batch.column(names.index(name)).to_pylist() for name in layout.metadata}
    ids = batch.column(names.index(ID_FIELD)).to_pylist()
    rows = []
    for i, item in enumerate(ids):
        row = {ID_FIELD: item, **{name: values[i] for name, values in columns.items()}}
        row[VECTOR_FIELD] = vectors[i]
        rows.append(row)
    return rows


def upsert_batches(
    store: CatalogStore,
    batches: Iterable[pa.RecordBatch | pa.Table],
    progress: Progress | None = None,
) -> int:
    """Upsert catalog rows batch by batch; returns how many were written."""
    written = 0
    for batch in batches:
        if len(batch) == 0:
            continue
        rows = batch_rows(batch, store.layout)
        store.call("upsert", rows)
        written += len(rows)
        if progress:
            progress(len(rows))
    return written


def load_catalog(
    catalog: Catalog,
    address: StoreAddress,
    *,
    collection: str = DEFAULT_COLLECTION,
    index: str = "flat",
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> LoadReport:
    """Load (upsert) a whole catalog: the collection is created for it, or must record the
    same encoder, attributes and fields."""
    layout = layout_of(catalog.manifest, index)
    with CatalogStore.create_or_open(address, collection, layout) as store:
        written = upsert_batches(store, catalog.batches(batch_size), progress)
        store.call("flush")  # sealed segments, then their indexes
        store.wait_indexed()
        return LoadReport(collection, written, store.count())


def delete_items(store: CatalogStore, items: Iterable[Any]) -> list[str | int]:
    """Delete items by id; returns the ids that were in the store (the others were not)."""
    keys = list(dict.fromkeys(item_key(item, store) for item in items))
    present = []
    for start in range(0, len(keys), DEFAULT_BATCH):
        part = keys[start : start + DEFAULT_BATCH]
        found = store.call("get", ids=part, output_fields=[ID_FIELD])
        present += [row[ID_FIELD] for row in found]
    if present:
        store.call("delete", ids=present)
    return present


def store_stats(store: CatalogStore) -> dict[str, Any]:
    """What the collection holds: rows, attributes, dim, fields, index, encoder."""
    layout = store.layout
    return {
        "store": str(store.address),
        "collection": store.collection,
        "rows": store.count(),
        "attributes": layout.attributes,
        "dim": layout.dim,
        "id_type": layout.id_type,
        "fields": layout.metadata,
        "index": layout.index,
        "encoder": layout.encoder,
    }


@dataclass
class UpsertReport:
    written: int
    skipped: list[dict[str, Any]]  # items that could not be embedded, with the reason


def upsert_items(
    store: CatalogStore,
    encoder: Encoder,
    items: Items,
    *,
    images_root: str | Path,
    workers: int = 2,
    progress: Progress | None = None,
) -> UpsertReport:
    """Embed new or changed items (`asen catalog embed`'s library, into a temporary
    catalog) and upsert them; the encoder and the fields must be the collection's."""
    store.check_encoder(encoder_identity(encoder).to_json())
    with tempfile.TemporaryDirectory(prefix="asen-upsert-") as folder:
        result = embed_catalog(encoder, items, folder, images_root=images_root, workers=workers)
        catalog = Catalog(folder)
        store.layout.check_same(layout_of(catalog.manifest, store.layout.index), store.where)
        written = upsert_batches(store, catalog.batches(DEFAULT_BATCH), progress)
    return UpsertReport(written, result.skipped)


def item_row(
    store: CatalogStore, item: Any, metadata: dict[str, Any], vectors: np.ndarray
) -> dict[str, Any]:
    """One store row from an id, metadata (checked against the fields; missing ones are
    null) and its `[A, D]` vectors."""
    layout = store.layout
    for name, value in metadata.items():
        if name not in layout.metadata:
            known = ", ".join(layout.metadata) or "none"
            raise AsenError(f"unknown field {name!r} (fields: {known})")
        if value is not None:
            field_literal(value, layout.field_kind(name), name)  # the type check
    values = {n: metadata.get(n) for n in layout.metadata}
    for name, value in values.items():
        if value is not None and layout.field_kind(name) == "DOUBLE":
            values[name] = float(value)
    flat = np.asarray(vectors, np.float32).reshape(-1)
    if flat.shape != (layout.vector_dim,) or not np.isfinite(flat).all():
        raise AsenError(f"item vectors must be finite [{len(layout.attributes)}, {layout.dim}]")
    return {ID_FIELD: item_key(item, store), **values, VECTOR_FIELD: flat}


def upsert_rows(store: CatalogStore, rows: list[dict[str, Any]]) -> int:
    """Upsert store rows (from `item_row`); acknowledged means seen by the next query."""
    store.call("upsert", rows)
    return len(rows)
