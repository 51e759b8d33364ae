"""`asen serve` as a subprocess for tests, stopped whatever the test does."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _sigint_default() -> None:
    """SIGINT acts in the child as in a terminal's foreground job, even when the tests run
    as a shell's background job (which starts with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def serve_process(
    repo: Path, log: Path, ports: dict[str, int]
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`asen serve` in a subprocess, read up to its 'Ctrl-C to stop' line (or an error):
    yields the process and that output. A test may stop it itself; one still running on
    exit (a failed check, a stop that hung) gets Ctrl-C, then after 60 s a kill, whose
    watchdog takes tritonserver down with it."""
    args = ["--repo", repo, "--log-file", log]
    for key, value in ports.items():
        args += [f"--{key.replace('_', '-')}", value]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from asen.cli import main; main()", "serve", *map(str, args)],
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_sigint_default,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C to stop") or "error" in line:
                break
        yield proc, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
