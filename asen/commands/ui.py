"""What every command prints with: the consoles, the one-line error, progress bars."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(soft_wrap=True, markup=False)  # user text (paths, names) prints as it is
err = Console(stderr=True)


def error_line(message: str) -> None:
    """A user mistake: one red line on stderr."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def say(line: str) -> None:
    """One line of plain text (no markup, no highlighting)."""
    console.print(line, markup=False, highlight=False)


def progress() -> Progress:
    """Progress bars on a terminal, on the main process only (torchrun)."""
    from asen.distributed import is_main

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal or not is_main(),
    )
