"""MkDocs hook: `<!-- figures: NAME -->` in a page becomes the table of docs/figures/NAME.json.

A figure file holds one benchmark table as the benchmark printed it, with where it was
measured, so a figure changes by rerunning a benchmark, not by editing prose:

    {"title": str, "source": "the command that produced it",
     "machine": {"cpu": ..., "cores": ..., "gpu": ..., "torch": ...} or a string,
     "measured": "YYYY-MM-DD" (or "before 0.2.0"), "columns": [str, ...],
     "rows": [[value, ...], ...], "notes": [str, ...]}

A marker naming a missing or invalid file stops the build with one line naming it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import jsonschema
from mkdocs.exceptions import PluginError

LOG = logging.getLogger("mkdocs.hooks.figures")
MARKER = re.compile(r"<!--\s*figures:\s*([A-Za-z0-9_.-]+)\s*-->")

# The figures contract, one JSON Schema file shared with the writer (benchmarks/harness.py)
SCHEMA: dict[str, Any] = json.loads(
    Path(__file__).with_name("figures.schema.json").read_text(encoding="utf-8")
)


def figures_dir(docs_dir: str | Path) -> Path:
    """The folder of the figure files of a docs folder."""
    return Path(docs_dir) / "figures"


def load_figure(path: Path) -> dict[str, Any]:
    """One figure file, checked against the contract; a bad one is a PluginError naming it."""
    try:
        figure = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PluginError(f"figures: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PluginError(f"figures: {path}: {error}") from None
    try:
        jsonschema.validate(figure, SCHEMA)
    except jsonschema.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise PluginError(f"figures: {path}: {where}: {error.message}") from None
    width = len(figure["columns"])
    for number, row in enumerate(figure["rows"]):
        if len(row) != width:
            raise PluginError(
                f"figures: {path}: rows/{number} has {len(row)} values for {width} columns"
            )
    return figure


def format_cell(value: Any) -> str:
    """A table cell: numbers as written, None as empty, pipes escaped."""
    if value is None:
        return ""
    return str(value).replace("|", "\\|")


def describe_machine(machine: str | dict[str, Any]) -> str:
    """The machine as one phrase."""
    if isinstance(machine, str):
        return machine
    return ", ".join(f"{key} {value}" for key, value in machine.items() if value is not None)


def render_figure(figure: dict[str, Any]) -> str:
    """The figure as a markdown table with its source, machine, date and notes below."""
    columns = figure["columns"]
    aligns = ["---"] + ["---:"] * (len(columns) - 1)
    lines = [
        "| " + " | ".join(format_cell(name) for name in columns) + " |",
        "|" + "|".join(aligns) + "|",
    ]
    lines += ["| " + " | ".join(format_cell(cell) for cell in row) + " |" for row in figure["rows"]]
    lines += [
        "",
        f"*{figure['title']}.* Source: `{figure['source']}`; "
        f"machine: {describe_machine(figure['machine'])}; measured: {figure['measured']}.",
    ]
    if figure["notes"]:
        lines.append("")
        lines += [f"- {note}" for note in figure["notes"]]
    return "\n".join(lines) + "\n"


def render_markers(markdown: str, docs_dir: str | Path, used: set[str] | None = None) -> str:
    """The page with every figures marker replaced by its rendered table; the names
    rendered are added to `used`."""
    folder = figures_dir(docs_dir)

    def replace(match: re.Match[str]) -> str:
        if used is not None:
            used.add(match.group(1))
        return render_figure(load_figure(folder / f"{match.group(1)}.json"))

    return MARKER.sub(replace, markdown)


def unused_figures(docs_dir: str | Path, used: set[str]) -> list[str]:
    """The figure files no page shows."""
    names = (path.stem for path in figures_dir(docs_dir).glob("*.json"))
    return sorted(name for name in names if name not in used)


_USED: set[str] = set()


def on_pre_build(config: Any) -> None:
    """MkDocs event: a new build has shown no figures yet."""
    _USED.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: render the figures markers of each page."""
    return render_markers(markdown, config["docs_dir"], _USED)


def on_post_build(config: Any) -> None:
    """MkDocs event: a figure file that no page shows is a warning (an error with --strict)."""
    for name in unused_figures(config["docs_dir"], _USED):
        LOG.warning("figures: docs/figures/%s.json is shown on no page", name)
