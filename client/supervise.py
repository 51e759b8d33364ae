"""`asen serve` keeps tritonserver up: a server that exits on its own (a crash, e.g. the
std::bad_alloc abort one oversized HTTP request causes in Triton 2.51) is restarted with
backoff on the same ports, view and log, and each restart is one line on stderr, a line in
the server log and a count in the status file (docs/robustness.md, "Server supervision").

The status file, `<log stem>.status.json` beside the server log, is rewritten (atomically)
at start, at each restart and at the stop: `state` (ready, restarting, stopped),
`restarts`, `last_exit` (the exit code, negative for a signal), `last_restart` (UTC ISO
time), the pids and the URLs. A monitor can alert on `restarts`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from asen import AsenError
from asen.atomic import atomic_write_text

if TYPE_CHECKING:
    from asen.client.server import ServerHandle

RESTART_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # backoff: no restart waits longer than 8 s
STABLE_S = 60.0  # a server up this long starts the backoff again from its first delay
MAX_FAILED_STARTS = 5  # restarts in a row that never got ready: give up, one error line


def status_path(log_file: Path) -> Path:
    """Where the status of the server logging to `log_file` is kept."""
    return log_file.with_name(f"{log_file.stem}.status.json")


def describe_exit(code: int) -> str:
    """'code 1' or 'signal SIGABRT' (Popen's negative codes are signals)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Supervisor:
    """Restarts `handle`'s server whenever it exits, until a stop signal (which the caller
    turns into KeyboardInterrupt) or MAX_FAILED_STARTS failed restarts in a row."""

    handle: ServerHandle
    report: Callable[[str], None] = _stderr_line
    restarts: int = 0
    last_exit: int | None = None
    last_restart: str | None = None
    _step: int = field(default=0, repr=False)
    _status_failed: bool = field(default=False, repr=False)

    @property
    def status_file(self) -> Path:
        return status_path(self.handle.log_file)

    def write_status(self, state: str) -> None:
        """The status file (see the module docstring)."""
        h = self.handle
        status = {
            "state": state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_restart": self.last_restart,
            "asen_pid": os.getpid(),
            "tritonserver_pid": h.process.pid,
            "http": h.http_url,
            "grpc": h.grpc_url,
            "metrics": h.metrics_url,
            "log": str(h.log_file),
        }
        try:
            atomic_write_text(self.status_file, json.dumps(status, indent=1) + "\n")
        except (OSError, AsenError) as e:  # serving matters more than the status file
            if not self._status_failed:
                self.report(f"cannot write the status file {self.status_file}: {e}")
            self._status_failed = True

    def run(self) -> None:
        """Block, restarting the server each time it exits; never returns normally."""
        failed = 0
        while True:
            up_since = time.monotonic()
            code = self.handle.process.wait()
            if time.monotonic() - up_since >= STABLE_S:
                self._step = 0
            try:
                self._restart(code)
                failed = 0
            except AsenError as e:  # it exited again while starting, or never got ready
                failed += 1
                if failed >= MAX_FAILED_STARTS:
                    self.write_status("stopped")
                    raise AsenError(
                        f"tritonserver failed {failed} restarts in a row, giving up: {e}"
                    ) from None

    def _restart(self, code: int) -> None:
        """Wait the backoff delay, start the same server again and wait until it is ready."""
        clear_remains(self.handle)  # first: its stubs would write over the log line below
        delay = RESTART_DELAYS_S[min(self._step, len(RESTART_DELAYS_S) - 1)]
        self._step += 1
        self.restarts += 1
        self.last_exit = code
        self.last_restart = datetime.now(timezone.utc).isoformat(timespec="seconds")
        line = (
            f"tritonserver exited unexpectedly ({describe_exit(code)}); restarting it in "
            f"{delay:g} s (restart {self.restarts}; log: {self.handle.log_file})"
        )
        self.report(line)
        self.write_status("restarting")
        with open(self.handle.log_file, "a") as log:
            log.write(f"\n[asen serve] {line}\n")
        time.sleep(delay)
        respawn(self.handle)
        self.write_status("ready")


def clear_remains(handle: ServerHandle) -> None:
    """After the server exited: kill its watchdog and what is left of its process group
    (Python-backend stubs outlive a crashed tritonserver)."""
    if handle.watchdog is not None:
        handle.watchdog.kill()
        handle.watchdog.wait()
        handle.watchdog = None
    try:
        os.killpg(handle.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    handle.process.wait()


def respawn(handle: ServerHandle) -> None:
    """Start `handle`'s server again (same command, view and ports; its log appended to)
    after it exited, and wait until it is ready. Raises AsenError when it exits again
    while starting."""
    from asen.client.server import _spawn

    clear_remains(handle)
    handle.process, handle.watchdog = _spawn(
        handle.command, handle.log_file, handle.env, append=True
    )
    handle.models, handle.versions = [], {}
    handle.wait_ready()
