"""The `asen` console script handles stop signals from its first moment: one sent while
Python is still importing the command line (seconds, for PyTorch) ends with one line and the
documented exit code, never a traceback or a silent death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ASEN = Path(sys.executable).with_name("asen")


def _wait_for_handlers(pid: int, timeout: float = 60.0) -> None:
    """Until process `pid` catches SIGTERM and SIGHUP (its SigCgt mask in /proc): on a loaded
    machine Python itself can take longer to start than any fixed pause."""
    wanted = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(
            next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16
        )
        if caught & wanted == wanted:
            return
        time.sleep(0.005)
    raise AssertionError("the stop signals were never caught")


@pytest.mark.parametrize(
    ("sig", "said"),
    [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM"),
     (signal.SIGHUP, "stopped by SIGHUP")],
    ids=lambda v: getattr(v, "name", ""),
)  # fmt: skip
@pytest.mark.parametrize("target", ["process", "group"])
def test_a_stop_signal_during_start_up_is_one_line(sig, said, target) -> None:
    proc = subprocess.Popen(
        [str(ASEN), "data", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, text=True,
    )  # fmt: skip
    _wait_for_handlers(proc.pid)  # asen.launch's handlers are in, asen.cli importing
    assert proc.poll() is None, "finished before the signal: the test needs a slower import"
    if target == "group":
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 128 + int(sig), (proc.returncode, errors)
    assert errors.strip() == said, errors
    assert "Traceback" not in errors + out
