"""The catalog files: what `asen catalog embed` writes and every reader opens
(docs/architecture.md, "Catalog files").

A catalog is a folder:

- `chunks/part-IIIII-of-NNNNN-CCCCCC.parquet`: chunk C of part I of N. Columns: `id`
  (string or int64), the items' metadata columns in table order, then one
  `emb_<attribute>` column per attribute, `fixed_size_list<float32>[dim]`, l2-normalised.
- `parts/part-IIIII-of-NNNNN.json`: one record per part (a shard of the items table):
  the encoder, the items' digest, its finished chunks, whether it is complete and the
  items it skipped with their reasons. Rewritten (atomically) after every chunk.
- `manifest.json`: the whole catalog, written when a one-part run finishes or by
  `asen catalog embed --merge`. Without it a reader merges the part records itself, and
  refuses the catalog while a part is missing or unfinished.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq

from asen import AsenError
from asen.atomic import atomic_write_text

CATALOG_FORMAT = "asen-catalog"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNKS = "chunks"
PARTS = "parts"
ID = "id"
EMBEDDING_PREFIX = "emb_"
ID_TYPES = ("string", "int64")

_IDENTITY_SCHEMA = {
    "type": "object",
    "required": ["checkpoint_sha256", "precision", "graph", "asen_version"],
    "properties": {
        "checkpoint_sha256": {"type": "string"},
        "precision": {"type": "string"},
        "graph": {"enum": ["all", "pair"]},
        "asen_version": {"type": "string"},
    },
}
_STRINGS = {"type": "array", "items": {"type": "string"}}
MANIFEST_SCHEMA = {
    "type": "object",
    "required": [*"format version encoder attributes dim id_column id_type".split()]
    + [*"metadata items_sha256 shards chunks rows".split()],
    "properties": {
        "format": {"const": CATALOG_FORMAT},
        "version": {"const": FORMAT_VERSION},
        "encoder": _IDENTITY_SCHEMA,
        "attributes": {**_STRINGS, "minItems": 1},
        "dim": {"type": "integer", "minimum": 1},
        "id_column": {"type": "string"},
        "id_type": {"enum": list(ID_TYPES)},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "items_sha256": {"type": "string"},
        "shards": {"type": "integer", "minimum": 1},
        "chunks": _STRINGS,
        "rows": {"type": "integer", "minimum": 0},
        "skipped": {"type": "integer", "minimum": 0},
    },
}
PART_SCHEMA = {
    "type": "object",
    "required": [*MANIFEST_SCHEMA["required"], "shard", "complete", "chunk_rows", "problems"],
    "properties": {
        **MANIFEST_SCHEMA["properties"],
        "shard": {"type": "integer", "minimum": 0},
        "complete": {"type": "boolean"},
        "chunk_rows": {"type": "integer", "minimum": 1},
        "problems": {"type": "array", "items": {"type": "object"}},
    },
}


def embedding_column(attribute: str) -> str:
    """The Parquet column holding `attribute`'s embeddings: `emb_` + the name with every
    character outside `[A-Za-z0-9_]` replaced by `_`."""
    return EMBEDDING_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", attribute)


def check_metadata_names(names: list[str], source: str = "items table") -> None:
    """Refuse metadata columns that would collide with `id` or an embedding column."""
    for name in names:
        if name == ID or name.startswith(EMBEDDING_PREFIX):
            raise AsenError(
                f"{source}: metadata column {name!r} clashes with the catalog's own columns "
                f"({ID!r} and {EMBEDDING_PREFIX}*): rename it in the items table"
            )


def embedding_schema(attributes: list[str], dim: int) -> pa.Schema:
    """The embedding columns of a chunk, in model order."""
    columns = [embedding_column(a) for a in attributes]
    if len(set(columns)) != len(columns):
        raise AsenError(f"attribute names {attributes} give the same column after sanitising")
    return pa.schema([(c, pa.list_(pa.float32(), dim)) for c in columns])


@dataclass(frozen=True)
class EncoderIdentity:
    """Which encoder made the vectors. Two catalogs (or a catalog and a query encoder) are
    in the same space when the checkpoint and the precision match; the graph and the asen
    version are recorded, not compared."""

    checkpoint_sha256: str
    precision: str
    graph: str  # "all" (the all-attributes graph) or "pair" (one pass per attribute)
    asen_version: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderIdentity:
        jsonschema.validate(data, _IDENTITY_SCHEMA)
        return cls(**{k: data[k] for k in _IDENTITY_SCHEMA["required"]})

    def matches(self, other: EncoderIdentity) -> bool:
        return (self.checkpoint_sha256, self.precision) == (
            other.checkpoint_sha256,
            other.precision,
        )


@dataclass
class CatalogManifest:
    """The whole catalog: encoder, attributes in model order, the id and metadata columns
    (name -> pyarrow type string), the items' digest, the number of parts and the chunk
    files (relative to the catalog folder) in row order."""

    encoder: EncoderIdentity
    attributes: list[str]
    dim: int
    id_column: str
    id_type: str
    metadata: dict[str, str]
    items_sha256: str
    shards: int
    chunks: list[str] = field(default_factory=list)
    rows: int = 0
    skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["encoder"] = self.encoder.to_json()
        return {"format": CATALOG_FORMAT, "version": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str | Path) -> CatalogManifest:
        _validate(data, MANIFEST_SCHEMA, source)
        names = [f for f in cls.__dataclass_fields__ if f != "encoder"]
        values = {name: data[name] for name in names if name in data}
        return cls(encoder=EncoderIdentity.from_json(data["encoder"]), **values)

    @classmethod
    def load(cls, folder: str | Path) -> CatalogManifest:
        """The manifest of the catalog in `folder`: manifest.json, or else the merge of its
        part records (refused while one is missing or unfinished). One AsenError line."""
        folder = Path(folder)
        path = folder / MANIFEST
        if path.is_file():
            manifest = cls.from_json(_read_json(path), source=path)
        elif any((folder / PARTS).glob("part-*.json")):
            manifest = merge_parts(folder)
        else:
            raise AsenError(f"{folder}: not a catalog (no {MANIFEST} and no part records)")
        _check_chunks_exist(folder, manifest.chunks)
        return manifest

    def save(self, folder: str | Path) -> None:
        atomic_write_text(Path(folder) / MANIFEST, json.dumps(self.to_json(), indent=1) + "\n")

    def embedding_columns(self) -> dict[str, str]:
        """Attribute name -> its Parquet column, in model order."""
        return {a: embedding_column(a) for a in self.attributes}


@dataclass
class PartRecord:
    """One part's progress: a manifest of its own chunks plus the part index, the chunk
    size, whether it is finished and the items it skipped (`{"row", "id", "image",
    "reason"}`, row numbers into the whole items table)."""

    manifest: CatalogManifest
    shard: int
    chunk_rows: int
    complete: bool = False
    problems: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        extra = {"shard": self.shard, "chunk_rows": self.chunk_rows, "complete": self.complete}
        return {**self.manifest.to_json(), **extra, "problems": self.problems}

    @classmethod
    def read(cls, path: Path) -> PartRecord:
        data = _read_json(path)
        _validate(data, PART_SCHEMA, path)
        manifest = CatalogManifest.from_json(
            {k: v for k, v in data.items() if k in MANIFEST_SCHEMA["properties"]}, source=path
        )
        return cls(
            manifest,
            shard=data["shard"],
            chunk_rows=data["chunk_rows"],
            complete=data["complete"],
            problems=data["problems"],
        )

    def save(self, folder: str | Path) -> None:
        text = json.dumps(self.to_json(), indent=1) + "\n"
        atomic_write_text(Path(folder) / part_record_name(self.shard, self.manifest.shards), text)


def part_name(shard: int, shards: int) -> str:
    return f"part-{shard:05d}-of-{shards:05d}"


def part_record_name(shard: int, shards: int) -> str:
    return f"{PARTS}/{part_name(shard, shards)}.json"


def chunk_name(shard: int, shards: int, chunk: int) -> str:
    return f"{CHUNKS}/{part_name(shard, shards)}-{chunk:06d}.parquet"


_SHARED = ("encoder", "attributes", "dim", "id_column", "id_type", "metadata", "items_sha256")


def read_parts(folder: str | Path) -> list[PartRecord]:
    """Every part record in the catalog folder, in part order."""
    paths = sorted((Path(folder) / PARTS).glob("part-*.json"))
    return sorted((PartRecord.read(p) for p in paths), key=lambda r: r.shard)


def merge_parts(folder: str | Path) -> CatalogManifest:
    """The catalog manifest from its part records: all N parts present and complete, made
    by the same encoder from the same items. One AsenError line otherwise."""
    folder = Path(folder)
    records = read_parts(folder)
    if not records:
        raise AsenError(f"{folder}: no part records in {PARTS}/")
    first = records[0].manifest
    for record in records:
        for name in _SHARED:
            if getattr(record.manifest, name) != getattr(first, name):
                raise AsenError(
                    f"{folder}: {part_name(record.shard, record.manifest.shards)} differs from "
                    f"{part_name(records[0].shard, first.shards)} in its {name}"
                )
    _check_all_parts(folder, records)
    return CatalogManifest(
        **{name: getattr(first, name) for name in _SHARED},
        shards=first.shards,
        chunks=[c for r in records for c in r.manifest.chunks],
        rows=sum(r.manifest.rows for r in records),
        skipped=sum(r.manifest.skipped for r in records),
    )


def _check_all_parts(folder: Path, records: list[PartRecord]) -> None:
    counts = {r.manifest.shards for r in records}
    if len(counts) != 1:
        raise AsenError(f"{folder}: part records disagree on the number of parts {sorted(counts)}")
    shards = counts.pop()
    present = {r.shard for r in records}
    missing = [i for i in range(shards) if i not in present]
    unfinished = [r.shard for r in records if not r.complete]
    if missing or unfinished:
        raise AsenError(
            f"{folder}: incomplete catalog, {len(present) - len(unfinished)} of {shards} parts "
            f"finished (missing parts {_ranges(missing) or 'none'}, unfinished "
            f"{_ranges(unfinished) or 'none'}); run their --shard I/{shards} first"
        )


def _ranges(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:10])
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > 10 else "")


class Catalog:
    """An opened catalog: its manifest and its rows, read chunk by chunk."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = CatalogManifest.load(self.folder)

    def num_rows(self) -> int:
        return self.manifest.rows

    def chunk_paths(self) -> list[Path]:
        return [self.folder / chunk for chunk in self.manifest.chunks]

    def schema(self) -> pa.Schema:
        paths = self.chunk_paths()
        return pq.read_schema(paths[0]) if paths else pa.schema([])

    def batches(
        self, batch_size: int = 1024, *, columns: list[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The rows in catalog order, at most `batch_size` a batch, one chunk in memory."""
        for path in self.chunk_paths():
            yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)

    def read(self, *, columns: list[str] | None = None) -> pa.Table:
        """The whole catalog as one table (small catalogs; use `batches` for big ones)."""
        tables = [pq.read_table(p, columns=columns) for p in self.chunk_paths()]
        return pa.concat_tables(tables) if tables else pa.table({})

    def problems(self) -> list[dict[str, Any]]:
        """The items skipped by every part, with their reasons."""
        return [p for r in read_parts(self.folder) for p in r.problems]


def open_catalog(folder: str | Path) -> Catalog:
    """Open the catalog in `folder` (one AsenError line when it is not a whole catalog)."""
    return Catalog(folder)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AsenError(f"{path}: unreadable catalog record ({exc})") from None
    if not isinstance(data, dict):
        raise AsenError(f"{path}: a catalog record must be a JSON object")
    return data


def _validate(data: dict[str, Any], schema: dict[str, Any], source: str | Path) -> None:
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise AsenError(f"{source}: invalid catalog record at {where}: {exc.message}") from None


def _check_chunks_exist(folder: Path, chunks: list[str]) -> None:
    missing = [c for c in chunks if not (folder / c).is_file()]
    if missing:
        raise AsenError(f"{folder}: {len(missing)} chunk file(s) missing, first {missing[0]}")
