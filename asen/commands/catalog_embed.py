"""`asen catalog embed`: a product catalog embedded for every attribute into Parquet chunks
(asen/catalog/embed.py, docs/catalog-embed.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from asen import AsenError
from asen.commands.evaluate import backend_options, open_encoder
from asen.commands.options import (
    EncoderOptions,
    ServerAddress,
    TritonConnection,
    Workers,
    with_options,
)
from asen.commands.ui import console, say

SHOWN_PROBLEMS = 20


class _Rate(ProgressColumn):
    """Images a second, over rich's recent window."""

    def render(self, task: Any) -> Text:
        speed = task.speed
        return Text(f"{speed:,.1f} images/s" if speed else "- images/s")


def _bars() -> Progress:
    from asen.distributed import is_main

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal or not is_main(),
    )


def _items(table: Path | None, images: Path, id_column: str, image_column: str):
    from asen.catalog.items import read_items, scan_images

    if table is None:
        return scan_images(images)
    return read_items(table, id_column=id_column, image_column=image_column)


def _report(result: Any) -> None:
    state = "catalog complete" if result.complete else "part finished (merge when all are)"
    say(
        f"wrote {result.folder}: {result.embedded} items embedded, {len(result.skipped)} "
        f"skipped; {result.chunks_written} chunks written, {result.chunks_resumed} resumed; "
        f"{state}"
    )
    for problem in result.skipped[:SHOWN_PROBLEMS]:
        say(f"  skipped row {problem['row']} (id {problem['id']!r}): {problem['reason']}")
    if len(result.skipped) > SHOWN_PROBLEMS:
        say(f"  ... {len(result.skipped) - SHOWN_PROBLEMS} more in {result.folder}/parts/")


def _merge(out: Path) -> None:
    from asen.catalog.embed import merge_catalog

    manifest = merge_catalog(out)
    say(
        f"merged {out}: {manifest.shards} parts, {len(manifest.chunks)} chunks, "
        f"{manifest.rows} items, {manifest.skipped} skipped"
    )


@with_options(encoder=EncoderOptions, server=ServerAddress, connection=TritonConnection)
def embed(
    items: Annotated[
        Path | None,
        typer.Argument(
            help="Items table (.csv, .parquet, .jsonl); omit it to embed every "
            "image under --images with its relative path as the id."
        ),
    ] = None,  # fmt: skip
    images: Annotated[
        Path | None, typer.Option(help="Images root: the table's image paths are under it.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Checkpoint, model repository or served model name.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Catalog folder to write.")] = None,
    id_column: Annotated[str, typer.Option(help="The items' id column.")] = "id",
    image_column: Annotated[str, typer.Option(help="The items' image path column.")] = "image",
    resume: Annotated[bool, typer.Option(help="Carry on an interrupted run.")] = False,
    shard: Annotated[str, typer.Option(help="Embed part I of N (I/N, from 0).")] = "0/1",
    merge: Annotated[
        bool, typer.Option(help="Check that every part of --out is finished; write its manifest.")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Triton: requests in flight.")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows a Parquet chunk.")] = 1024,
    workers: Workers = 2,
    **groups: Any,
) -> None:
    """Embed a product catalog for every attribute into Parquet chunks with a manifest;
    resumable (--resume), shardable (--shard I/N, then --merge)."""
    from asen.catalog.embed import Shard, embed_catalog

    if out is None:
        raise AsenError("--out CATALOG is required")
    if merge:
        return _merge(out)
    if images is None or model is None:
        raise AsenError("--images ROOT and --model M are required (or --merge --out CATALOG)")
    encoder, server, connection = groups["encoder"], groups["server"], groups["connection"]
    part = Shard.parse(shard)
    table = _items(items, images, id_column, image_column)
    options = backend_options(encoder, server, connection)
    if concurrency is not None:
        options["concurrency"] = concurrency
    with open_encoder(encoder.backend.value, model, **options) as opened, _bars() as bars:
        task = bars.add_task(f"embedding {table.source}", total=len(part.rows(len(table))))
        result = embed_catalog(
            opened,
            table,
            out,
            images_root=images,
            shard=part,
            chunk_rows=chunk_rows,
            resume=resume,
            workers=workers,
            progress=lambda n: bars.advance(task, n),
        )
    _report(result)
