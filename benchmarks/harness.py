"""What every benchmark shares: its command line, interleaved timing and medians, the machine
it ran on, and its output: the JSON object it prints and, with `--figures PATH`, the table the
docs site renders (docs/figures/*.json).

A figures file is one JSON object (FIGURES_SCHEMA, docs/hooks/figures.schema.json):

    {"title": ..., "source": the command line that measured it,
     "machine": {"cpu", "cores", "gpu" (or null), "torch", "onnxruntime"},
     "measured": "YYYY-MM-DD", "columns": [...], "rows": [[...], ...], "notes": [...]}

Cells are strings, numbers or null (no booleans: write "yes" / "no"). The docs build checks
the same schema file (docs/hooks/figures.py). Each benchmark maps its printed result to columns
and rows (a `Figures`); the printed JSON stays what it was.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jsonschema
import psutil

from asen.atomic import atomic_write_text

# The figures contract: one JSON Schema file, also read by the docs build's figures hook
SCHEMA_FILE = Path(__file__).parents[1] / "docs" / "hooks" / "figures.schema.json"
FIGURES_SCHEMA: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------- command line


def _figures_path(value: str) -> Path:
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder; name the .json file to write")
    return path


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The benchmark's argument parser: described by `doc`'s first paragraph, with the
    `--figures PATH` option every benchmark has."""
    summary = (doc or "").strip().split("\n\n")[0]
    found = argparse.ArgumentParser(description=summary)
    found.add_argument(
        "--figures",
        type=_figures_path,
        metavar="PATH",
        help="also write the result as a docs figures table (JSON) to PATH",
    )
    return found


def command_line(argv: Sequence[str] | None = None, module: str | None = None) -> str:
    """The command that ran this benchmark, as one would type it again from the repository
    root: `python -m benchmarks.<script> <arguments>`."""
    argv = sys.argv if argv is None else argv
    if module is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else None
    program = f"python -m {module}" if module else f"python {argv[0]}"
    return " ".join([program, *map(shlex.quote, argv[1:])])


# ---------------------------------------------------------------------------------- timing


def seconds(call: Callable[[], object], reps: int = 1) -> float:
    """Seconds one `call()` takes, averaged over `reps` calls in a row."""
    start = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - start) / reps


def interleaved(
    calls: Mapping[str, Callable[[], object]],
    rounds: int,
    *,
    warmup: int = 1,
    reps: int | Mapping[str, int] = 1,
) -> dict[str, list[float]]:
    """Seconds a call of each variant, per round: every round times every variant once in
    turn, so that other work on a shared machine slows them alike. `warmup` untimed rounds
    go first; `reps` (one number, or one per variant) calls are averaged into one timing."""
    each = reps if isinstance(reps, Mapping) else dict.fromkeys(calls, reps)
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(seconds(call, each[name]))
    return times


def median(values: Iterable[float], digits: int | None = None) -> float:
    """The median, rounded to `digits` where given."""
    found = statistics.median(values)
    return found if digits is None else round(found, digits)


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median of the per-round ratios (rounds paired, so a slow round cancels out)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


# --------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform says."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _installed(*names: str) -> str | None:
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def gpu_name() -> str | None:
    """The first CUDA GPU PyTorch sees, or None."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "gpu": gpu_name(),
        "torch": _installed("torch"),
        "onnxruntime": _installed("onnxruntime", "onnxruntime-gpu"),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (other work on the machine skews timings)."""
    return [round(v, 2) for v in os.getloadavg()]


# ---------------------------------------------------------------------------------- output


@dataclass
class Figures:
    """A benchmark's result as a table for the docs."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)


def figures_document(figures: Figures, *, source: str, measured: datetime.date | None = None):
    """The figures file's content: the table with where, when and how it was measured.
    Raises ValueError where it breaks the contract (a row's width, a cell's type, no rows)."""
    for number, row in enumerate(figures.rows, 1):
        if len(row) != len(figures.columns):
            raise ValueError(
                f"figures row {number} has {len(row)} cells for {len(figures.columns)} columns"
            )
    day = measured or datetime.datetime.now(datetime.timezone.utc).date()
    document = {
        "title": figures.title,
        "source": source,
        "machine": machine(),
        "measured": day.isoformat(),
        "columns": list(figures.columns),
        "rows": [list(row) for row in figures.rows],
        "notes": list(figures.notes),
    }
    try:
        jsonschema.validate(document, FIGURES_SCHEMA)
    except jsonschema.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ValueError(f"figures {where}: {error.message}") from None
    return document


def write_figures(path: Path, figures: Figures, *, source: str | None = None) -> None:
    """Write the figures file at `path` (staged, then switched in)."""
    document = figures_document(figures, source=source or command_line())
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def finish(
    result: dict,
    args: argparse.Namespace,
    to_figures: Callable[[dict], Figures],
    *,
    indent: int | None = None,
) -> None:
    """Print the result as one JSON object; with --figures, also write its table (after the
    print, so a long run's result is never lost to a figures problem, which is one line on
    stderr and exit status 1)."""
    print(json.dumps(result, indent=indent))
    sys.stdout.flush()
    if getattr(args, "figures", None):
        try:
            write_figures(args.figures, to_figures(result))
        except (ValueError, OSError) as error:
            raise SystemExit(f"error: --figures {args.figures}: {error}") from None


class PeakMemory:
    """Peak resident memory of this process plus its children (decode workers, servers it
    started), sampled every 50 ms: `with PeakMemory() as m: ...; m.peak` in bytes."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                total = me.memory_info().rss + sum(
                    c.memory_info().rss for c in me.children(recursive=True)
                )
            except psutil.Error:
                total = me.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
