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
    time.sleep(0.8)  # Python is up, the command line (PyTorch) still importing
    assert proc.poll() is None, "finished before the signal: the test needs a slower import"
    if target == "group":
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 128 + int(sig), (proc.returncode, errors)
    assert errors.strip() == said, errors
    assert "Traceback" not in errors + out
