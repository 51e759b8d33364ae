"""`asen data`: datasets in the split format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from asen import AsenError
from asen.commands.ui import console

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
