"""`asen`: the command line. Composes the commands of each layer, handles errors once,
and holds the entry point.

The library's commands (asen.commands) are added here by name. The layers above it add
theirs through the `asen.commands` entry points in pyproject.toml (asen.export: export;
asen.client: serve, bench, app), each a `register(app)` function, so the library never
imports them (docs/architecture.md, "Layering").
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated, Any

import typer

import asen
from asen import AsenError
from asen.commands import catalog, data, evaluate, search, train
from asen.commands.ui import console, err, error_line
from asen.signals import exit_code, signal_of, stop_line, stop_signals_raise


class _OneLineErrors(typer.core.TyperGroup):
    """Every command's user mistakes in one place: an AsenError or a bad option value (e.g.
    an unknown backend name, which lists the valid ones) is one red line and exit 1;
    Ctrl-C is 'interrupted' and exit 130. SIGTERM and SIGHUP unwind the command as Ctrl-C
    does (asen/signals.py: its `finally` blocks stop helpers and remove temporaries), then
    'stopped by SIGTERM' and exit 143 (129 for SIGHUP); a command that stops cleanly on a
    signal itself (train, serve, app) installs its own handling inside this one."""

    def invoke(self, ctx: Any) -> Any:
        try:
            with stop_signals_raise():
                return super().invoke(ctx)
        except typer.BadParameter as e:
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
            error_line(f"{e.format_message()}{where}")
            raise typer.Exit(1) from None
        except AsenError as e:
            error_line(str(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:
            signum = signal_of(e)
            err.print(f"[red]{stop_line(signum)}[/red]")
            raise typer.Exit(exit_code(signum)) from None


app = typer.Typer(
    cls=_OneLineErrors,
    help="ASEN++ attribute-specific fashion similarity: train, export, serve, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"asen {asen.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """ASEN++ attribute-specific fashion similarity: train, export, serve, evaluate."""


app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("eval")(evaluate.eval_)
app.command("embed")(evaluate.embed)
app.command("compare")(evaluate.compare)
app.command("index")(search.index)
app.command("search")(search.search)
app.command("explain")(search.explain)
app.add_typer(catalog.app, name="catalog")
for _layer in entry_points(group="asen.commands"):
    _layer.load()(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
