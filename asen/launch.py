"""The `asen` console script. Importing the command line takes seconds (PyTorch), and a stop
signal in that time would otherwise get Python's default: SIGINT a KeyboardInterrupt
traceback, SIGTERM and SIGHUP a silent death. Here the signals are handled before the
first heavy import, with the same line and exit code as during a command.

During the import the handler ends the process at once (`os._exit`) instead of raising:
nothing has been written or started yet, and an exception raised while a C++ extension
module initialises (PyTorch's, through pybind11) aborts the process instead of unwinding."""

from __future__ import annotations

import os
import signal
from types import FrameType

from asen.signals import STOP_SIGNALS, exit_code, stop_line


def _stop_now(signum: int, frame: FrameType | None) -> None:
    """One line, then the shell's 128 + signal, without unwinding through the import."""
    os.write(2, f"{stop_line(signum)}\n".encode())
    os._exit(exit_code(signum))


def main() -> None:
    """Import and run the command line; a stop signal during the import is one line."""
    previous = {sig: signal.signal(sig, _stop_now) for sig in STOP_SIGNALS}
    from asen.cli import main as run_cli

    for sig, handler in previous.items():
        signal.signal(sig, handler)
    run_cli()
