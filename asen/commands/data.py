"""`asen data`: datasets in the split format."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from asen import AsenError
from asen.commands.ui import console, progress, say

if TYPE_CHECKING:
    from asen.data.importers import ImportReport

app = typer.Typer(help="Datasets.", no_args_is_help=True)


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    seed: Annotated[int, typer.Option(min=0, help="Random seed (same seed, same files).")] = 0,
    train: Annotated[int, typer.Option(min=10, help="Training images.")] = 4000,
    eval: Annotated[
        int, typer.Option("--eval", min=5, help="Images in each of valid and test.")
    ] = 1000,
    attributes: Annotated[
        str | None,
        typer.Option(
            help="Attribute value counts, e.g. 3,6,2,7,4 (default: 4 garment attributes)."
        ),
    ] = None,
) -> None:
    """Write the built-in synthetic garment dataset in the reference split format."""
    from asen.data.synthetic import generate

    attrs = None
    if attributes:
        try:
            attrs = {f"attr{i}": int(v) for i, v in enumerate(attributes.split(","))}
        except ValueError:
            raise AsenError(
                f"--attributes {attributes}: expected comma-separated integers"
            ) from None
    with console.status(escape(f"writing synthetic dataset to {out}")):
        meta = generate(out, seed=seed, n_train=train, n_eval=eval, attributes=attrs)
    names = ", ".join(f"{a['name']} ({a['values']})" for a in meta["attributes"])
    console.print(
        f"wrote {out}: {train} train, {eval} valid, {eval} test images; attributes: {names}"
    )


class LabelFormat(str, Enum):
    table = "table"
    fashionai = "fashionai"


@app.command("import")
def import_(
    labels: Annotated[
        Path, typer.Argument(help="Label table (.csv, .parquet, .jsonl) or FashionAI label.csv.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write.")],
    images: Annotated[
        Path | None, typer.Option("--images", help="Folder the image paths are relative to.")
    ] = None,
    label_format: Annotated[
        LabelFormat, typer.Option("--format", help="table (long or wide form) or fashionai.")
    ] = LabelFormat.table,
    split: Annotated[
        str, typer.Option("--split", help="Fractions of images for train,valid,test.")
    ] = "0.8,0.1,0.1",
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the split (same seed, same files).")
    ] = 0,
    query_fraction: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="Share of valid/test images that are queries.")
    ] = 0.2,
    skip_bad_images: Annotated[
        bool, typer.Option("--skip-bad-images", help="Leave out undecodable images, listed.")
    ] = False,
    cache: Annotated[
        Path | None, typer.Option(help="Download cache for URLs (default ~/.cache/asen/downloads).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Threads downloading and decoding.")] = 8,
) -> None:
    """Import labels from a table or the FashionAI release into a dataset in the split format."""
    from asen.data.importers import ImportOptions, import_dataset
    from asen.data.partition import parse_fractions

    options = ImportOptions(
        fractions=parse_fractions(split),
        seed=seed,
        query_fraction=query_fraction,
        skip_bad_images=skip_bad_images,
        cache=cache,
        workers=workers,
    )
    with progress() as bars:
        task = bars.add_task("checking images", total=None, info="")
        report = import_dataset(
            labels,
            out,
            images=images,
            kind=label_format.value,
            options=options,
            progress=lambda done, total: bars.update(task, completed=done, total=total),
        )
    _print_import_report(report)


def _print_import_report(report: ImportReport) -> None:
    """The per-attribute table, every image left out with its reason, and the merges."""
    table = Table(title=f"imported {report.out}")
    table.add_column("attribute", overflow="fold")
    for column in ("values", "train", "valid", "test", "queries", "candidates"):
        table.add_column(column, justify="right")
    table.add_column("left out", overflow="fold")
    for row in report.attributes:
        split = [str(row.images[s]) for s in ("train", "valid", "test")]
        queries = " / ".join(str(row.queries[s]) for s in ("valid", "test"))
        candidates = " / ".join(str(row.candidates[s]) for s in ("valid", "test"))
        left = ", ".join(f"{n} {problem}" for problem, n in sorted(row.skipped.items()))
        table.add_row(row.name, str(len(row.values)), *split, queries, candidates, left or "-")
    console.print(table)
    for skipped in report.skipped:
        say(f"left out {skipped.image}: {skipped.problem} ({skipped.reason})")
    if report.merged:
        say(
            f"merged {report.merged_references} references into {len(report.merged)} images "
            f"with the same bytes (listed in {report.out}/import-report.json)"
        )
    total = ", ".join(f"{n} {split}" for split, n in report.images.items())
    say(f"wrote {report.out}: {total} images (queries and candidates: valid / test)")
