"""`asen catalog embed`: every item of a catalog embedded for every attribute, written as
Parquet chunks (docs/catalog-embed.md; the files: `asen.catalog.files`).

A run embeds one part (`--shard I/N`, rows [I*n/N, (I+1)*n/N) of the items) in chunks of
`chunk_rows` rows. Images are decoded with the one preprocessing function in DataLoader
workers, in batches that never cross a chunk, and encoded with `Encoder.encode_all`; an
encoder that takes files (Triton with `--send-bytes`) gets the files, which its server
decodes, with the same preprocessing function. Each chunk is written in one step, then
the part record lists it, so a kill loses at most the chunk in progress and `resume`
carries on from the next one, after checking that the encoder and the items are those the
record names. The output depends only on the items, the encoder and `chunk_rows`: an
interrupted and resumed run writes the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

import asen
from asen import AsenError
from asen.atomic import TEMP_PREFIX, atomic_write_bytes
from asen.catalog.files import (
    CHUNKS,
    ID,
    MANIFEST,
    PARTS,
    CatalogManifest,
    EncoderIdentity,
    PartRecord,
    chunk_name,
    embedding_schema,
    merge_parts,
    part_name,
    part_record_name,
    read_parts,
)
from asen.catalog.items import Items, screen
from asen.data.datasets import batches
from asen.data.images import BadImageError, load_image
from asen.encoders import Encoder
from asen.signals import ignore_stop_signals

DEFAULT_CHUNK_ROWS = 1024
Progress = Callable[[int], None]
FAULT_ENV = "ASEN_CATALOG_FAULT"  # tests: `POINT#N` sends SIGKILL the N-th time POINT is reached
FAULT_POINTS = ("batch", "chunk", "record")  # a batch encoded; a chunk written; its record saved
_reached: dict[str, int] = {}


def fault_point(point: str) -> None:
    """The kill -9 test hook: nothing unless ASEN_CATALOG_FAULT names this point."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, count = spec.partition("#")
    if name not in FAULT_POINTS:
        raise ValueError(f"{FAULT_ENV}={spec}: POINT must be one of {', '.join(FAULT_POINTS)}")
    if name == point:
        _reached[point] = _reached.get(point, 0) + 1
        if _reached[point] == int(count or 1):
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Shard:
    """Part `index` of `count` (`--shard I/N`)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, _, count = text.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            raise AsenError(f"--shard {text}: expected I/N, e.g. 0/4") from None
        if shard.count < 1 or not 0 <= shard.index < shard.count:
            raise AsenError(f"--shard {text}: needs 0 <= I < N")
        return shard

    def rows(self, n: int) -> range:
        """This part's rows of n items: a contiguous block, so parts keep the table order."""
        return range(self.index * n // self.count, (self.index + 1) * n // self.count)


@dataclass
class EmbedResult:
    """What a run did: rows embedded and skipped (all finished chunks of the part), chunks
    written now and before, and whether the catalog is whole (its manifest written)."""

    folder: Path
    embedded: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    chunks_written: int = 0
    chunks_resumed: int = 0
    complete: bool = False


def encoder_identity(encoder: Encoder) -> EncoderIdentity:
    """The encoder's identity as the catalog records it."""
    found = encoder.identity()
    return EncoderIdentity(
        checkpoint_sha256=found.get("checkpoint_sha256", ""),
        precision=found.get("precision", "fp32"),
        graph="all" if encoder.has_all_graph else "pair",
        asen_version=asen.__version__,
    )


class CatalogImages(Dataset):
    """Item `row`: (uint8 [3,S,S] image, row, "") or (zeros, row, the reason it failed)."""

    def __init__(self, root: Path, images: list[str | None], size: int):
        self.root, self.images, self.size = root, images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, row: int):
        path = self.root / str(self.images[row])
        try:
            if not path.is_file():
                raise BadImageError(f"{path}: image file not found")
            return torch.from_numpy(load_image(path, self.size)), row, ""
        except BadImageError as e:
            reason = (str(e).strip().splitlines() or ["undecodable image"])[-1]
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), row, reason


def _batches(rows: range, skip: dict[int, str], size: int) -> list[list[int]]:
    """The rows of one chunk to decode, `size` at a time (screened rows left out)."""
    keep = [r for r in rows if r not in skip]
    return [keep[i : i + size] for i in range(0, len(keep), size)]


class _Run:
    """One part's run: the plan of chunks, the part record, the writing of each chunk."""

    def __init__(self, encoder: Encoder, items: Items, folder: Path, shard: Shard, chunk_rows: int):
        if chunk_rows < 1:
            raise AsenError(f"--chunk-rows {chunk_rows}: must be at least 1")
        self.encoder, self.items, self.folder, self.shard = encoder, items, folder, shard
        rows = shard.rows(len(items))
        self.chunks = [rows[i : i + chunk_rows] for i in range(0, len(rows), chunk_rows)]
        info = encoder.info
        self.schema = embedding_schema(info.names, info.dim)
        manifest = CatalogManifest(
            encoder=encoder_identity(encoder),
            attributes=info.names,
            dim=info.dim,
            id_column=items.id_column,
            id_type=items.id_type,
            metadata=items.metadata_types(),
            items_sha256=items.digest,
            shards=shard.count,
        )
        self.record = PartRecord(manifest, shard=shard.index, chunk_rows=chunk_rows)
        self.root = Path(".")

    # opening ------------------------------------------------------------------------------
    def open(self, resume: bool) -> None:
        """Refuse what must not be written over; on `resume` take the finished chunks."""
        mine = self.folder / part_record_name(self.shard.index, self.shard.count)
        if (self.folder / MANIFEST).is_file() and not resume:
            raise AsenError(
                f"{self.folder}: holds a finished catalog; pass --resume to check it, "
                "or choose another --out"
            )
        if self.folder.exists() and not self.folder.is_dir():
            raise AsenError(f"{self.folder}: is a file, not a catalog folder")
        if self.folder.is_dir() and not resume:
            foreign = [p.name for p in self.folder.iterdir() if p.name not in (CHUNKS, PARTS)]
            if foreign or mine.exists():
                raise AsenError(
                    f"{self.folder}: already exists; pass --resume to carry on an "
                    "interrupted run of the same encoder and items, or choose another --out"
                )
        others = read_parts(self.folder) if (self.folder / PARTS).is_dir() else []
        for other in others:
            self._check_same(other, mine if other.shard == self.shard.index else None)
        if resume and mine.is_file():
            self.record = next(r for r in others if r.shard == self.shard.index)
        self._remove_own_temporaries()

    def _check_same(self, other: PartRecord, mine: Path | None) -> None:
        """A part record in the folder must be of the same encoder, items and chunking."""
        want, got = self.record.manifest, other.manifest
        where = f"{self.folder}/{part_record_name(other.shard, got.shards)}"
        if not want.encoder.matches(got.encoder):
            raise AsenError(
                f"{where}: embedded by checkpoint {got.encoder.checkpoint_sha256[:12]} "
                f"{got.encoder.precision}, this encoder is "
                f"{want.encoder.checkpoint_sha256[:12]} {want.encoder.precision}"
            )
        if got.items_sha256 != want.items_sha256 or got.id_column != want.id_column:
            raise AsenError(f"{where}: made from other items than {self.items.source}")
        if (got.attributes, got.dim, got.shards) != (want.attributes, want.dim, want.shards):
            raise AsenError(f"{where}: other attributes, dimension or number of parts")
        if mine is not None and other.chunk_rows != self.record.chunk_rows:
            raise AsenError(
                f"{where}: written with --chunk-rows {other.chunk_rows}, not "
                f"{self.record.chunk_rows}; resume with the same value"
            )

    def _remove_own_temporaries(self) -> None:
        """Temporary files a killed run of this part left (never another part's)."""
        own = part_name(self.shard.index, self.shard.count)
        for sub in (CHUNKS, PARTS):
            for stale in (self.folder / sub).glob(f"{TEMP_PREFIX}{own}*"):
                stale.unlink(missing_ok=True)

    # embedding ----------------------------------------------------------------------------
    def loader(self, start: int, skip: dict[int, str], workers: int) -> Iterator[tuple]:
        """(chunk index, batch of decoded images, rows, reasons) from chunk `start` on."""
        size = self.encoder.all_batch_size * max(1, getattr(self.encoder, "in_flight", 1))
        plan = [
            (k, batch)
            for k in range(start, len(self.chunks))
            for batch in _batches(self.chunks[k], skip, size)
        ]
        if not plan:
            return
        if self.encoder.input_kind == "files":  # the encoder sends the files; a server decodes
            for k, batch in plan:
                yield k, None, np.array(batch, dtype=np.int64), [""] * len(batch)
            return
        data = CatalogImages(self.root, self.items.images, self.encoder.info.source_size)
        loader = DataLoader(
            data,
            batch_sampler=[b for _, b in plan],
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            worker_init_fn=ignore_stop_signals if workers else None,  # the main process stops
        )
        with contextlib.closing(batches(loader)) as decoded:
            for (k, _), (images, rows, reasons) in zip(plan, decoded, strict=True):
                yield k, images.numpy(), rows.numpy(), list(reasons)

    def write_chunk(self, k: int, rows: list[int], embeddings: np.ndarray) -> str:
        """Chunk k's Parquet file (one atomic write); returns its name."""
        index = pa.array(rows, pa.int64())
        columns: dict[str, pa.Array] = {ID: self.items.ids.take(index)}
        for name in self.items.metadata.column_names:
            columns[name] = self.items.metadata.column(name).take(index)
        dim = self.encoder.info.dim
        for a, column in enumerate(self.schema):
            flat = pa.array(np.ascontiguousarray(embeddings[:, a, :]).reshape(-1), pa.float32())
            columns[column.name] = pa.FixedSizeListArray.from_arrays(flat, dim)
        table = pa.table(columns)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        name = chunk_name(self.shard.index, self.shard.count, k)
        atomic_write_bytes(self.folder / name, buffer.getvalue())
        return name

    def discard(self) -> None:
        """Remove what this part wrote (a run where every item was bad leaves nothing)."""
        for name in self.record.manifest.chunks:
            (self.folder / name).unlink(missing_ok=True)
        (self.folder / part_record_name(self.shard.index, self.shard.count)).unlink(missing_ok=True)
        for sub in (self.folder / CHUNKS, self.folder / PARTS, self.folder):
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()

    def finish_chunk(self, k: int, rows: list[int], problems: list[dict[str, Any]]) -> None:
        manifest = self.record.manifest
        manifest.chunks.append(chunk_name(self.shard.index, self.shard.count, k))
        manifest.rows += len(rows)
        manifest.skipped += len(problems)
        self.record.problems += sorted(problems, key=lambda p: p["row"])
        self.record.save(self.folder)


def _problem(items: Items, row: int, reason: str) -> dict[str, Any]:
    return {"row": row, "id": items.ids[row].as_py(), "image": items.images[row], "reason": reason}


def _encode(
    run: _Run, images: np.ndarray | None, rows: np.ndarray, reasons: list[str]
) -> tuple[np.ndarray, list[str]]:
    """(embeddings [g,A,D] of the batch's good rows, per row the reason it failed): of the
    decoded images, or, with no images, of the files, which the encoder sends to be
    decoded by its server (an encoder whose `input_kind` is "files")."""
    if images is None:
        files = [run.root / str(run.items.images[r]) for r in rows]
        embedded, reasons = run.encoder.encode_all_files(files)  # type: ignore[attr-defined]
        return embedded[[not why for why in reasons]], reasons
    good = np.array([not why for why in reasons], dtype=bool)
    if not good.any():
        return np.zeros((0, len(run.encoder.info.names), run.encoder.info.dim), np.float32), reasons
    return run.encoder.encode_all(images[good]), reasons


def _embed_chunk(
    run: _Run, k: int, batches: Iterator[tuple], skip: dict[int, str], progress: Progress
) -> None:
    """Embed chunk k from its decoded batches and write it, reporting rows as they pass."""
    rows: list[int] = []
    vectors: list[np.ndarray] = []
    bad = [_problem(run.items, r, skip[r]) for r in run.chunks[k] if r in skip]
    for _, images, batch_rows, decoded in batches:
        embedded, reasons = _encode(run, images, batch_rows, decoded)
        bad += [
            _problem(run.items, int(r), why)
            for r, why in zip(batch_rows, reasons, strict=True)
            if why
        ]
        if len(embedded):
            vectors.append(embedded)
            rows += [int(r) for r, why in zip(batch_rows, reasons, strict=True) if not why]
        progress(len(batch_rows))
        fault_point("batch")
    shape = (0, len(run.encoder.info.names), run.encoder.info.dim)
    run.write_chunk(k, rows, np.concatenate(vectors) if vectors else np.zeros(shape, np.float32))
    fault_point("chunk")
    run.finish_chunk(k, rows, bad)
    fault_point("record")
    progress(sum(1 for r in run.chunks[k] if r in skip))


def _embed_chunks(run: _Run, skip: dict[int, str], workers: int, progress: Progress) -> int:
    """Embed and write the chunks the part record does not list yet; returns how many."""
    start = len(run.record.manifest.chunks)
    # closing: however the loop ends (a stop signal, an error), the decode workers are
    # stopped and joined here, not left to the interpreter's exit (they ignore SIGTERM)
    with contextlib.closing(run.loader(start, skip, workers)) as loaded:
        groups = itertools.groupby(loaded, key=lambda batch: batch[0])
        group = next(groups, None)
        for k in range(start, len(run.chunks)):
            batches: Iterator[tuple] = iter(())
            if group is not None and group[0] == k:
                batches = group[1]
            _embed_chunk(run, k, batches, skip, progress)
            if group is not None and group[0] == k:
                group = next(groups, None)
    return len(run.chunks) - start


def embed_catalog(
    encoder: Encoder,
    items: Items,
    out: str | Path,
    *,
    images_root: str | Path,
    shard: Shard = Shard(),
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    resume: bool = False,
    workers: int = 2,
    progress: Progress | None = None,
) -> EmbedResult:
    """Embed part `shard` of `items` (images under `images_root`) into the catalog folder
    `out`; a one-part catalog gets its manifest at the end. `progress(n)` is called as n
    more rows are done. A bad item is listed, not fatal, unless every item is bad."""
    folder = Path(out)
    run = _Run(encoder, items, folder, shard, chunk_rows)
    run.root = Path(images_root)
    run.open(resume)
    skip = {r: why for r, why in screen(items).items() if r in shard.rows(len(items))}
    resumed = len(run.record.manifest.chunks)
    if progress:
        progress(sum(len(run.chunks[k]) for k in range(resumed)))
    written = _embed_chunks(run, skip, workers, progress or (lambda n: None))
    manifest = run.record.manifest
    if manifest.rows == 0 and manifest.skipped:
        run.discard()
        first = run.record.problems[0]
        raise AsenError(
            f"{items.source}: none of the {manifest.skipped} items could be embedded "
            f"(row {first['row']}: {first['reason']})"
        )
    run.record.complete = True
    run.record.save(folder)
    complete = shard.count == 1
    if complete:
        merge_parts(folder).save(folder)
    return EmbedResult(folder, manifest.rows, list(run.record.problems), written, resumed, complete)


def merge_catalog(folder: str | Path) -> CatalogManifest:
    """`--merge`: check that every part of a sharded catalog is present and finished and
    write its manifest (one AsenError line naming the missing parts otherwise)."""
    folder = Path(folder)
    if not (folder / PARTS).is_dir():
        raise AsenError(f"{folder}: not a catalog being embedded (no {PARTS}/ folder)")
    manifest = merge_parts(folder)
    manifest.save(folder)
    return manifest
