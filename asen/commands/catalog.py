"""`asen catalog ...`: product catalogs. The store commands (load, upsert, delete, stats,
search) keep a catalog in Milvus (asen/catalog/store.py, docs/catalog-store.md)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from asen import AsenError
from asen.catalog.store import DEFAULT_COLLECTION
from asen.commands import catalog_embed
from asen.commands.evaluate import backend_options, open_encoder
from asen.commands.options import (
    EncoderOptions,
    JsonOut,
    ServerAddress,
    TritonConnection,
    Workers,
    with_options,
)
from asen.commands.ui import console, progress, say

app = typer.Typer(help="Product catalogs: embed, load into a store, update, search.")

STORE_HELP = "Milvus Lite file (a path ending .db) or a Milvus server http(s)://[TOKEN@]host:port."
StoreUri = Annotated[str, typer.Option("--store", help=STORE_HELP)]
StoreToken = Annotated[
    str | None,
    typer.Option("--token", help="Milvus server token (user:password or API key); or in the URI."),
]
Collection = Annotated[str, typer.Option("--collection", help="The catalog's collection.")]


@dataclass(frozen=True)
class StoreOptions:
    """Which store and collection (also the optional store of `asen app`)."""

    store: StoreUri
    token: StoreToken = None
    collection: Collection = DEFAULT_COLLECTION

    def open(self):
        """The existing catalog collection (one error line when absent or unreachable)."""
        from asen.catalog.store import CatalogStore, parse_store

        return CatalogStore.open(parse_store(self.store, self.token), self.collection)


IndexKind = Annotated[
    str, typer.Option(help="flat (exact), ivf (IVF_FLAT) or hnsw; chosen when created.")
]


@with_options(where=StoreOptions)
def load(
    catalog: Annotated[Path, typer.Argument(help="Catalog folder (`asen catalog embed`).")],
    index: IndexKind = "flat",
    batch_size: Annotated[int, typer.Option(min=1, max=65536, help="Rows a write.")] = 1024,
    *,
    where: StoreOptions,
) -> None:
    """Load (upsert) a catalog into the store, creating the collection or checking its encoder.

    Loading again is idempotent: an upsert by item id."""
    from asen.catalog.files import open_catalog
    from asen.catalog.load import load_catalog
    from asen.catalog.store import parse_store

    opened = open_catalog(catalog)
    address = parse_store(where.store, where.token)
    with progress() as bars:
        task = bars.add_task(f"loading {catalog}", total=opened.num_rows(), info="")
        report = load_catalog(
            opened,
            address,
            collection=where.collection,
            index=index,
            batch_size=batch_size,
            progress=lambda n: bars.advance(task, n),
        )
    say(f"loaded {report.rows} items into {where.collection}; it holds {report.total}")


@with_options(where=StoreOptions, encoder=EncoderOptions, server=ServerAddress,
              connection=TritonConnection)  # fmt: skip
def upsert(
    items: Annotated[Path, typer.Argument(help="Items table (.csv or .parquet).")],
    images: Annotated[Path, typer.Option("--images", help="Root the image column is under.")],
    model: Annotated[str, typer.Option("--model", help="The encoder's model (see --backend).")],
    id_column: Annotated[str, typer.Option(help="Column of the item ids.")] = "id",
    image_column: Annotated[str, typer.Option(help="Column of the image paths.")] = "image",
    workers: Workers = 2,
    **groups: Any,
) -> None:
    """Embed new or changed items and upsert them into the store, in one step."""
    from asen.catalog.items import read_items
    from asen.catalog.load import upsert_items

    table = read_items(items, id_column=id_column, image_column=image_column)
    options = backend_options(groups["encoder"], groups["server"], groups["connection"])
    with (
        groups["where"].open() as store,
        open_encoder(groups["encoder"].backend.value, model, **options) as encoder,
    ):
        report = upsert_items(store, encoder, table, images_root=images, workers=workers)
    say(f"upserted {report.written} items into {groups['where'].collection}")
    for problem in report.skipped[:10]:
        say(f"skipped row {problem.get('row')} ({problem.get('id')}): {problem.get('reason')}")


@with_options(where=StoreOptions)
def delete(
    ids: Annotated[list[str], typer.Argument(help="Item ids to delete.")],
    *,
    where: StoreOptions,
) -> None:
    """Delete items by id (ids that are not there are reported, not an error)."""
    from asen.catalog.load import delete_items

    with where.open() as store:
        gone = delete_items(store, ids)
    missing = len(set(ids)) - len(gone)
    say(f"deleted {len(gone)} items" + (f"; {missing} were not in the store" if missing else ""))


@with_options(where=StoreOptions)
def stats(json_out: JsonOut = None, *, where: StoreOptions) -> None:
    """What the store holds: items, attributes, dim, fields, index, encoder."""
    from asen.atomic import atomic_write_text
    from asen.catalog.load import store_stats

    with where.open() as store:
        found = store_stats(store)
    for key, value in found.items():
        say(f"{key}: {value if isinstance(value, str | int) else json.dumps(value)}")
    if json_out:
        atomic_write_text(json_out, json.dumps(found, indent=2) + "\n")


def parse_weights(specs: list[str]) -> dict[str, float]:
    """`--attribute NAME` or `NAME=WEIGHT` (repeatable) -> name -> weight."""
    weights: dict[str, float] = {}
    for spec in specs:
        name, _, raw = spec.rpartition("=") if "=" in spec else (spec, "", "1")
        try:
            weight = float(raw)
        except ValueError:
            raise AsenError(f"--attribute {spec!r}: the weight {raw!r} is not a number") from None
        if not math.isfinite(weight):
            raise AsenError(f"--attribute {spec!r}: the weight must be finite")
        weights[name.strip()] = weight
    return weights


def parse_filter(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AsenError(f"--filter is not JSON ({e.msg} at character {e.pos})") from None


def _hits_table(hits: list) -> Table:
    table = Table()
    for column in ("rank", "id", "score", "per attribute", "fields"):
        table.add_column(column)
    for rank, hit in enumerate(hits, 1):
        scores = ", ".join(f"{a} {s:.4f}" for a, s in hit.scores.items())
        fields = ", ".join(f"{n}={v}" for n, v in hit.fields.items())
        table.add_row(str(rank), str(hit.id), f"{hit.score:.4f}", scores, fields)
    return table


def _query_vectors(store, image: Path | None, model: str | None, groups: dict) -> Any:
    """A photo's vectors through the chosen backend, or None for an item query."""
    from asen.catalog.query import photo_vectors

    if image is None:
        return None
    if model is None:
        raise AsenError("--image needs --model (the encoder of the photo)")
    if not image.is_file():
        raise AsenError(f"--image {image}: file not found")
    options = backend_options(groups["encoder"], groups["server"], groups["connection"])
    with open_encoder(groups["encoder"].backend.value, model, **options) as encoder:
        return photo_vectors(encoder, image, store)


@with_options(where=StoreOptions, encoder=EncoderOptions, server=ServerAddress,
              connection=TritonConnection)  # fmt: skip
def search(
    attribute: Annotated[
        list[str], typer.Option("--attribute", "-a", help="NAME or NAME=WEIGHT; repeatable.")
    ],
    image: Annotated[Path | None, typer.Option(help="Query photo.")] = None,
    item: Annotated[str | None, typer.Option(help="Query item id (more like this).")] = None,
    model: Annotated[str | None, typer.Option(help="The photo's encoder model.")] = None,
    filter_: Annotated[
        str | None, typer.Option("--filter", help='JSON, e.g. {"price": {"lt": 50}}.')
    ] = None,
    k: Annotated[int, typer.Option(help="Results.")] = 10,
    field: Annotated[list[str] | None, typer.Option(help="Metadata field to show.")] = None,
    json_out: JsonOut = None,
    **groups: Any,
) -> None:
    """The k items most like a photo or a stored item, by weighted attributes and a filter."""
    from asen.atomic import atomic_write_text
    from asen.catalog.query import search as run_search

    if (image is None) == (item is None):
        raise AsenError("give --image PHOTO or --item ID, one of them")
    weights, spec = parse_weights(attribute), parse_filter(filter_)
    with groups["where"].open() as store:
        vectors = _query_vectors(store, image, model, groups)
        hits = run_search(
            store, weights=weights, k=k, vectors=vectors, item=item, filter=spec,
            fields=field or [],
        )  # fmt: skip
    console.print(_hits_table(hits))
    if json_out:
        atomic_write_text(json_out, json.dumps([h.to_json() for h in hits], indent=2) + "\n")


app.command("embed")(catalog_embed.embed)
app.command("load")(load)
app.command("upsert")(upsert)
app.command("delete")(delete)
app.command("stats")(stats)
app.command("search")(search)
