"""The `asen` console script. Importing the command line takes seconds (PyTorch), and a stop
signal in that time would otherwise get Python's default: SIGINT a KeyboardInterrupt
traceback, SIGTERM and SIGHUP a silent death. Here the signals are handled before the
first heavy import, with the same line and exit code as during a command."""

from __future__ import annotations

import signal
import sys

from asen.signals import Stopped, exit_code, signal_of, stop_signals_raise


def main() -> None:
    """Import and run the command line; a stop signal during the import is one line."""
    try:
        with stop_signals_raise():
            from asen.cli import main as run_cli
    except KeyboardInterrupt as e:
        signum = signal_of(e)
        name = signal.Signals(signum).name
        said = f"stopped by {name}" if isinstance(e, Stopped) else "interrupted"
        print(said, file=sys.stderr)
        sys.exit(exit_code(signum))
    run_cli()
