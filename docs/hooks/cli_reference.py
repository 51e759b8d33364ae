"""MkDocs hook: `<!-- cli-reference -->` in a page becomes the reference of every `asen`
command, generated from the Typer app itself, so it cannot drift from `asen --help`.

It walks the command tree of `typer.main.get_command(app)`: every group and command
(hidden ones left out, as `--help` leaves them out), its help, usage, arguments and
options with their type, default and help.
"""

from __future__ import annotations

import enum
import importlib
import re
from typing import Any

import typer

MARKER = re.compile(r"<!--\s*cli-reference\s*-->")
PROGRAM = "asen"


def load_app() -> typer.Typer:
    """The `asen` Typer app."""
    return importlib.import_module("asen.cli").app


def walk(command: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) for the command and everything under it, depth first, in the
    order `--help` lists them; hidden commands are left out."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        if not getattr(sub, "hidden", False):
            found += walk(sub, (*path, name))
    return found


def default_text(param: Any) -> str:
    """The default as `--help` would show it; empty where there is none."""
    value = param.default
    if param.required or value is None or callable(value):
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value) if value else ""
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return param.opts[0] if value else param.secondary_opts[0]
    return str(value)


def type_text(param: Any, context: Any) -> str:
    """The value type (with its range where the option declares one)."""
    if getattr(param, "is_flag", False):
        return "flag"
    text = param.display_type(context).strip("<>")
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None or high is not None:
        text += f" {'' if low is None else low}..{'' if high is None else high}"
    return text


def cell(text: str | None) -> str:
    """Text for one table cell: one line, pipes escaped."""
    return " ".join((text or "").split()).replace("|", "\\|")


def param_row(param: Any, context: Any) -> str:
    """One table row for an argument or option."""
    if param.param_type_name == "argument":
        names = f"`{param.name.upper()}`"
    else:
        names = ", ".join(f"`{name}`" for name in [*param.opts, *param.secondary_opts])
    required = " (required)" if param.required else ""
    default = default_text(param)
    return (
        f"| {names}{required} | {cell(type_text(param, context))} | "
        f"{cell(f'`{default}`' if default else '')} | {cell(getattr(param, 'help', ''))} |"
    )


def render_command(path: tuple[str, ...], command: Any) -> str:
    """One command's section: heading, help, usage and its parameters."""
    title = " ".join(path)
    context = command.make_context(title, [], resilient_parsing=True)
    lines = [f"### `{title}`", ""]
    if command.help:
        lines += [line.strip() for line in command.help.strip().splitlines()] + [""]
    pieces = " ".join(command.collect_usage_pieces(context))
    lines += ["```", f"{title} {pieces}".rstrip(), "```", ""]
    params = [param for param in command.params if not getattr(param, "hidden", False)]
    if params:
        lines += ["| argument or option | type | default | help |", "|---|---|---|---|"]
        lines += [param_row(param, context) for param in params]
        lines.append("")
    subcommands = [name for name, sub in getattr(command, "commands", {}).items() if not sub.hidden]
    if subcommands:
        lines += ["Commands: " + ", ".join(f"`{title} {name}`" for name in subcommands), ""]
    return "\n".join(lines)


def render_reference(app: typer.Typer) -> str:
    """The reference of every command of the app, as markdown."""
    root = typer.main.get_command(app)
    return "\n".join(render_command(path, command) for path, command in walk(root, (PROGRAM,)))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: render the reference where a page asks for it."""
    if not MARKER.search(markdown):
        return markdown
    reference = render_reference(load_app())
    return MARKER.sub(lambda _match: reference, markdown)
