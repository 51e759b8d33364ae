"""Every command and option of the CLI, fed wrong types, out-of-range numbers, folders for
files, missing and unreadable paths: no run prints a traceback, a failure is one `error:`
line with exit code 1, a usage error exits 2.

The cases are generated from the Typer app itself, so a new command or option is covered
without touching this file. Required parameters get a value that fails fast (a path that
does not exist and cannot be made, a missing checkpoint), so that no case does real work;
each fuzzed value replaces one of them at a time. Runs are in-process (CliRunner)."""

from __future__ import annotations

import enum
import signal
import types
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from asen.cli import app

runner = CliRunner()
NOWHERE = "/proc/asen-fuzz/nowhere"  # missing, and no folder can be made there
CASE_TIMEOUT_S = 60  # a case that runs this long did real work: a bad value got through
# Options that keep a command from starting long work whatever one other value is: a
# server that would otherwise bind and serve, a dataset that would otherwise be generated.
EXTRA = {
    ("app",): ["--host", "203.0.113.1", "--max-upload-mb", "0"],
    ("data", "synth"): ["--attributes", "x", "--train", "10", "--eval", "5"],
    ("serve",): ["--repo", NOWHERE],
}


def _commands(group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(_commands(get_command(app)))


def _kind(param) -> type | None:
    """The Python type behind a parameter: Optional and list[...] unwrapped."""
    annotation = param.type_descriptor.annotation
    while typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0]
    return annotation if isinstance(annotation, type) else None


def _bad_values(kind: type | None, paths: dict[str, str]) -> list[str]:
    if kind is bool or kind is None:
        return []
    if kind is int:
        return ["abc", "-1", "0", "1.5", str(2**63)]
    if kind is float:
        return ["abc", "-1", "0", "nan", "inf"]
    if issubclass(kind, Path):
        return list(paths.values())
    if issubclass(kind, enum.Enum):
        return ["bogus", ""]
    return ["", "bogus", "a,b", "[/red]x"]


def _poison(kind: type | None) -> str:
    """A value for a required parameter that fails fast."""
    if kind is int or kind is float:
        return "1"
    if kind is not None and issubclass(kind, enum.Enum):
        return next(iter(kind)).value
    return NOWHERE


def _extra(name: tuple[str, ...], fuzzed) -> list[str]:
    """EXTRA's option-value pairs for `name`, less the fuzzed option's own: appended after
    the fuzzed value, it would replace it (click keeps an option's last value)."""
    pairs = EXTRA.get(name, [])
    skip = set(getattr(fuzzed, "opts", ()))
    return [
        x
        for opt, value in zip(pairs[::2], pairs[1::2], strict=True)
        if opt not in skip
        for x in (opt, value)
    ]


def _cases(name: tuple[str, ...], command, paths: dict[str, str]) -> Iterator[list[str]]:
    params = [p for p in command.params if p.name != "help" and not getattr(p, "hidden", False)]
    args = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option" and not p.is_flag]

    def line(fuzzed=None, value: str = "") -> list[str]:
        out = [value if a is fuzzed else _poison(_kind(a)) for a in args]
        for o in options:
            if o is fuzzed:
                out += [o.opts[0], value]
            elif o.required:
                out += [o.opts[0], _poison(_kind(o))]
        return [*name, *out, *_extra(name, fuzzed)]

    yield line()
    for param in [*args, *options]:
        for value in _bad_values(_kind(param), paths):
            yield line(param, value)


def _timeout(signum, frame):
    raise TimeoutError(f"still running after {CASE_TIMEOUT_S} s")


def _problem(case: list[str]) -> str | None:
    """What is wrong with how the CLI answered `case`, or None."""
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            result = runner.invoke(app, case)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out = result.output
    loud = [w for w in seen if issubclass(w.category, (UserWarning, RuntimeWarning))]
    if loud:  # printed on stderr before the error line
        return f"warned {loud[0].category.__name__}: {loud[0].message}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"raised {type(result.exception).__name__}: {result.exception}"
    if "Traceback" in out:
        return "printed a traceback"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if result.exit_code == 1:
        errors = [ln for ln in lines if ln.startswith("error:")]
        if len(errors) != 1 or lines[-1] != errors[0]:
            return f"exit 1 without exactly one final error line: {out!r}"
    elif result.exit_code == 2:
        if "Usage" not in out and "Error" not in out:
            return f"exit 2 without a usage error: {out!r}"
    elif result.exit_code != 0:
        return f"exit code {result.exit_code}: {out!r}"
    return None


@pytest.fixture
def paths(tmp_path, monkeypatch) -> dict[str, str]:
    """Wrong paths of every kind; the working folder is empty, so defaults find nothing."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("not what any command reads\n")
    unreadable = tmp_path / "unreadable.pt"
    unreadable.write_bytes(b"\x80\x04garbage")
    unreadable.chmod(0)  # unreadable, except for root, to whom it is garbage
    return {
        "folder": str(tmp_path / "folder"),
        "missing": str(tmp_path / "missing" / "x.pt"),
        "under a file": str(tmp_path / "file.txt" / "x.pt"),
        "unreadable": str(unreadable),
        "markup": str(tmp_path / "[/red]x.png"),  # missing; printed as it is
        "empty": "",
    }


def test_the_app_has_commands_and_options() -> None:
    """The generator sees the app (a regression here would make the fuzz test vacuous)."""
    assert {("train",), ("eval",), ("embed",), ("serve",), ("data", "synth")} <= set(COMMANDS)
    eval_options = {o for p in COMMANDS[("eval",)].params for o in getattr(p, "opts", [])}
    assert {"--batch-size", "--workers", "--json", "--data"} <= eval_options


def test_a_fuzzed_value_is_the_one_the_command_gets(paths) -> None:
    """No fixed extra option comes after a fuzzed one and replaces it: the fuzzed value is
    its option's last occurrence (`asen app --max-upload-mb nan` is really tried)."""
    cases = 0
    for name, command in COMMANDS.items():
        options = [p for p in command.params if p.param_type_name == "option" and not p.is_flag]
        for case in _cases(name, command, paths):
            for o in options:
                flags = [i for i, word in enumerate(case) if word in o.opts]
                if len(flags) > 1:
                    raise AssertionError(f"{o.opts[0]} given twice: {case}")
                cases += 1
    assert cases > 100
    app_cases = list(_cases(("app",), COMMANDS[("app",)], paths))
    assert ["--max-upload-mb", "nan"] in [c[i : i + 2] for c in app_cases for i in range(len(c))]


@pytest.mark.parametrize("name", sorted(COMMANDS), ids=" ".join)
def test_no_traceback_and_one_line_errors(name, paths) -> None:
    failures = []
    for case in _cases(name, COMMANDS[name], paths):
        problem = _problem(case)
        if problem:
            failures.append(f"asen {' '.join(map(repr, case))}: {problem}")
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures[:20])
