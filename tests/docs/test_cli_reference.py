"""The CLI reference of the docs site, generated from the Typer app, lists every command,
argument and option that `asen --help` shows, recursively through every group."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from asen.cli import app
from tests.docs.docs_helpers import load_hook

cli_reference = load_hook("cli_reference")

PANEL = re.compile(r"^╭─ (\w+) ")
COMMAND_ROW = re.compile(r"^│ (\w[\w-]*)\s")
ARGUMENT_ROW = re.compile(r"^│ \*?\s*([a-z][\w-]*)(?:\.\.\.)?\s+<")
OPTION_NAME = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def help_panels(path: list[str]) -> dict[str, set[str]]:
    """What `asen PATH --help` shows: {"commands", "arguments", "options"} -> names."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    shown: dict[str, set[str]] = {"commands": set(), "arguments": set(), "options": set()}
    panel = None
    for line in result.output.splitlines():
        if header := PANEL.match(line):
            panel = header.group(1).lower()
        elif line.startswith("╰"):
            panel = None
        elif panel == "commands" and (row := COMMAND_ROW.match(line)):
            shown["commands"].add(row.group(1))
        elif panel == "arguments" and (row := ARGUMENT_ROW.match(line)):
            shown["arguments"].add(row.group(1))
        elif panel == "options" and line[1:].lstrip(" *").startswith("-"):
            shown["options"].update(OPTION_NAME.findall(line[1:].split("<")[0]))
    shown["options"].discard("--help")
    return shown


def help_tree(path: list[str]) -> dict[tuple[str, ...], dict[str, set[str]]]:
    """help_panels of the command at PATH and of every command under it."""
    panels = help_panels(path)
    tree = {tuple(path): panels}
    for name in panels["commands"]:
        tree.update(help_tree([*path, name]))
    return tree


def reference_sections() -> dict[tuple[str, ...], str]:
    """The generated reference, split into its commands' sections by their titles."""
    text = cli_reference.render_reference(app)
    parts = re.split(r"^### `([^`]+)`$", text, flags=re.M)
    titled = zip(parts[1::2], parts[2::2], strict=True)
    return {tuple(title.split()[1:]): body for title, body in titled}


def test_the_reference_lists_every_command_argument_and_option_of_help() -> None:
    shown = help_tree([])
    sections = reference_sections()
    assert set(sections) == set(shown)
    assert ("data", "synth") in shown and ("bench", "serve") in shown
    assert shown[("compare",)]["arguments"] == {"results"}
    assert {"-c", "--config", "--resume", "--no-resume"} <= shown[("train",)]["options"]
    for path, panels in shown.items():
        section = sections[path]
        for option in panels["options"]:
            assert f"`{option}`" in section, (path, option)
        for argument in panels["arguments"]:
            assert f"`{argument.upper()}`" in section, (path, argument)
        for command in panels["commands"]:
            assert f"`{' '.join(['asen', *path, command])}`" in section, (path, command)


def test_help_and_defaults_come_from_the_app() -> None:
    synth = reference_sections()[("data", "synth")]
    assert "| `--train` | int range 10.. | `4000` | Training images. |" in synth
    assert "`OUT` (required)" in synth
