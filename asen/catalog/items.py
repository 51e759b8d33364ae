"""The items of a catalog: a CSV, Parquet or JSON Lines table with an id column, an image
column and metadata columns, or every image under a folder (the relative path as the id).

Rows that cannot be embedded (an empty or repeated id, an empty image cell) are found here,
before anything is decoded; a missing or undecodable image is found when it is decoded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from asen import AsenError
from asen.catalog.files import check_metadata_names
from asen.data.tables import read_table

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
DIGEST_BLOCK = 1 << 20


@dataclass
class Items:
    """The rows of a catalog in table order: ids (string or int64), image references
    (relative to the images root, None when empty) and the metadata columns."""

    source: str
    ids: pa.Array
    images: list[str | None]
    metadata: pa.Table  # the other columns, table order (no rows counted when it has none)
    id_column: str
    digest: str  # sha256 of what the rows were read from, to recognise them on --resume

    def __len__(self) -> int:
        return len(self.images)

    @property
    def id_type(self) -> str:
        return "int64" if pa.types.is_integer(self.ids.type) else "string"

    def metadata_types(self) -> dict[str, str]:
        return {f.name: str(f.type) for f in self.metadata.schema}


def _column(table: pa.Table, name: str, path: Path, option: str) -> pa.Array:
    if name not in table.column_names:
        have = ", ".join(table.column_names)
        raise AsenError(f"{path}: no column {name!r} ({option}; the table has: {have})")
    column = table.column(name).combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def _ids(column: pa.Array, path: Path, name: str) -> pa.Array:
    """int64 ids from an integer column, string ids from a text one."""
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    if pa.types.is_null(column.type):
        return column.cast(pa.string())
    raise AsenError(f"{path}: id column {name!r} holds {column.type}; ids must be text or integers")


def _plain(table: pa.Table) -> pa.Table:
    """Metadata as Parquet keeps it: dictionary columns decoded, all-null columns as text."""
    columns = []
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if pa.types.is_null(column.type):
            column = column.cast(pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _file_digest(path: Path, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(DIGEST_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_items(path: str | Path, *, id_column: str = "id", image_column: str = "image") -> Items:
    """The items of a table; every column but the id is kept as metadata (the image column
    too: it says where each item's picture is). One AsenError line for a bad table."""
    path = Path(path)
    table = read_table(path, text_columns=[id_column, image_column], what="items table")
    if table.num_rows == 0:
        raise AsenError(f"{path}: empty table (no rows)")
    ids = _ids(_column(table, id_column, path, "--id-column"), path, id_column)
    images = _column(table, image_column, path, "--image-column")
    try:
        cells = images.cast(pa.string()).to_pylist()
    except (pa.ArrowException, ValueError):
        raise AsenError(f"{path}: image column {image_column!r} must hold paths") from None
    metadata = _plain(table.drop_columns([id_column]))
    check_metadata_names(metadata.column_names, str(path))
    return Items(
        source=str(path),
        ids=ids,
        images=[c.strip() or None if c is not None else None for c in cells],
        metadata=metadata,
        id_column=id_column,
        digest=_file_digest(path, f"{id_column}\0{image_column}\0"),
    )


def scan_images(root: str | Path) -> Items:
    """Every image file under `root` (by suffix), sorted; the id is the relative path."""
    root = Path(root)
    if not root.is_dir():
        raise AsenError(f"--images {root}: folder not found")
    found = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not found:
        raise AsenError(f"--images {root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    listing = "\n".join(f"{name}\t{(root / name).stat().st_size}" for name in found)
    return Items(
        source=str(root),
        ids=pa.array(found, pa.string()),
        images=list(found),
        metadata=pa.table({}),
        id_column="path",
        digest=hashlib.sha256(listing.encode()).hexdigest(),
    )


def screen(items: Items) -> dict[int, str]:
    """Rows that cannot be embedded, with the reason: an empty id, an id seen on an earlier
    row (the first one is kept), an empty image cell."""
    bad: dict[int, str] = {}
    first: dict[object, int] = {}
    for row, (item_id, image) in enumerate(zip(items.ids.to_pylist(), items.images, strict=True)):
        if item_id is None or item_id == "":
            bad[row] = "empty id"
        elif item_id in first:
            bad[row] = f"duplicate id (first on row {first[item_id]})"
        else:
            first[item_id] = row
            if image is None:
                bad[row] = "no image"
    return bad
