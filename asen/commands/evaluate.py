"""`asen eval`, `asen embed` and `asen compare`: a split embedded through any backend."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from asen import AsenError
from asen.commands.options import (
    EncoderOptions,
    JsonOut,
    ModelArg,
    ServerAddress,
    SplitOptions,
    TritonConnection,
    output_file,
    with_options,
)
from asen.commands.ui import console, err, progress

EMBED_GROUPS = {
    "split": SplitOptions,
    "encoder": EncoderOptions,
    "server": ServerAddress,
    "connection": TritonConnection,
}


def open_encoder(backend: str, model: str, **options: Any):
    """The backend's Encoder for `model` (asen.backends.open_encoder), described on stderr."""
    from asen.backends import open_encoder as open_backend

    encoder = open_backend(backend, model, **options)
    err.print(encoder.describe(), highlight=False)
    return encoder


def backend_options(
    encoder: EncoderOptions, server: ServerAddress, connection: TritonConnection
) -> dict[str, Any]:
    """The options for `open_encoder`; a Triton connection option with another backend is
    one error."""
    given = connection.given()
    if encoder.backend.value != "triton" and given:
        raise AsenError(f"{given[0]} applies to --backend triton")
    return {
        "device": encoder.device,
        "batch_size": encoder.batch_size,
        "send_bytes": encoder.send_bytes,
        "model_version": encoder.model_version,
        "url": server.url,
        "protocol": server.protocol,
        **connection.options(),
    }


def embed_split(
    model: str,
    *,
    split: SplitOptions,
    encoder: EncoderOptions,
    server: ServerAddress,
    connection: TritonConnection,
):
    """Open the backend's Encoder, embed the split (sharded under torchrun) and close it;
    returns (dataset, embedded) on rank 0 and None on the other ranks."""
    from asen.data.splits import open_dataset
    from asen.distributed import is_main, process_group
    from asen.evaluate import embed_split as embed
    from asen.evaluate import num_pairs

    backend = encoder.backend.value
    options = backend_options(encoder, server, connection)
    with process_group(encoder.device, encoder.dist_timeout):
        with open_encoder(backend, model, **options) as opened:
            dataset = open_dataset(split.data, opened.info.attributes)
            with progress() as bars:
                what = f"encoding {split.split} ({backend})"
                task = bars.add_task(what, total=num_pairs(dataset, split.split), info="")
                embedded = embed(
                    opened,
                    dataset,
                    split.split,
                    workers=split.workers,
                    skip_bad=split.skip_bad_images,
                    progress=lambda n: bars.advance(task, n),
                )
        if not is_main():
            return None
    return dataset, embedded


def print_map_table(results: list) -> None:
    table = Table(title=f"mAP ({results[0].split} split)")
    table.add_column("attribute")
    table.add_column("queries", justify="right")
    for r in results:
        table.add_column(r.backend, justify="right")
    first = results[0]
    for name, n in first.num_queries.items():
        table.add_row(name, str(n), *(f"{100 * r.per_attribute[name]:.2f}" for r in results))
    table.add_row(
        "overall (weighted)",
        str(sum(first.num_queries.values())),
        *(f"{100 * r.overall_map:.2f}" for r in results),
        style="bold",
    )
    console.print(table)


def _store_address(store: str | None):
    """`--store` checked before the split is embedded."""
    from asen.catalog.store import parse_store

    return parse_store(store) if store else None


@with_options(**EMBED_GROUPS)
def eval_(
    model: ModelArg,
    json_out: JsonOut = None,
    store: Annotated[
        str | None,
        typer.Option(help="Rank in this catalog store (a .db path or http(s)://host:port)."),
    ] = None,
    **groups: Any,
) -> None:
    """Per-attribute and overall mAP (the paper's protocol) through any backend."""
    from asen.atomic import atomic_write_text
    from asen.evaluate import score

    address = _store_address(store)
    done = embed_split(model, **groups)
    if done is None:
        return
    dataset, embedded = done
    backend, split = groups["encoder"].backend.value, groups["split"].split
    if address is None:
        result = score(embedded, dataset.names, backend=backend, split=split)
    else:  # the store ranks (an exact collection): the same mAP to 1e-6
        from asen.catalog.store_map import store_map

        result = store_map(embedded, dataset.names, address, backend=backend, split=split)
    print_map_table([result])
    if result.skipped:
        console.print(
            f"skipped {result.skipped} entries whose image could not be decoded", style="yellow"
        )
    if json_out:
        atomic_write_text(json_out, json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"wrote {json_out}")


@with_options(**EMBED_GROUPS)
def embed(
    model: ModelArg,
    out: Annotated[Path, typer.Option(callback=output_file, help="Output .npz file.")],
    **groups: Any,
) -> None:
    """Embed every query and candidate entry of a split into an .npz file."""
    done = embed_split(model, **groups)
    if done is None:
        return
    dataset, embedded = done
    embedded.save(out, dataset.names)
    console.print(
        f"wrote {out}: {len(embedded.embeddings)} embeddings of dim {embedded.embeddings.shape[1]}"
        + (f"; skipped {embedded.skipped} undecodable entries" if embedded.skipped else "")
    )


def compare(
    results: Annotated[list[Path], typer.Argument(help="Files written by `asen eval --json`.")],
) -> None:
    """Print several evaluations (e.g. torch, onnx, triton) side by side."""
    from asen.evaluate import EvalResult

    loaded = [EvalResult.load(p) for p in results]
    names = {tuple(r.num_queries) for r in loaded}
    if len(names) != 1 or len({r.split for r in loaded}) != 1:
        raise AsenError("the results are of different splits or attributes; compare like with like")
    if len({r.backend for r in loaded}) < len(loaded):  # e.g. onnx fp32 / fp16 / int8 graphs
        loaded = [
            dataclasses.replace(r, backend=f"{r.backend} ({p.stem})")
            for r, p in zip(loaded, results, strict=True)
        ]
    print_map_table(loaded)
