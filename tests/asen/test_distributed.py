"""`asen train` and `asen eval` under `torchrun --nproc-per-node 2` with gloo on the CPU:
the same steps and triplets as one process, a checkpoint one process can evaluate, and a
clear failure (not a hang) when a rank dies or stops responding."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from asen import distributed
from asen.cli import app
from tests.processes import children

runner = CliRunner()
SMALL = [
    "-c",
    "small",
    "--set",
    "train.triplets_per_epoch=32",
    "--set",
    "train.batch_size=8",
    "--workers",
    "0",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
ASEN = str(Path(sys.executable).parent / "asen")


def _ok(args: list) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list) -> list[str]:
    """A 2-process torchrun of `asen ARGS` on a free port of 127.0.0.1."""
    endpoint = f"127.0.0.1:{_free_port()}"
    rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--no-python"]
    return [*TORCHRUN, *rdzv, ASEN, *(str(a) for a in args)]


def _run(args: list, timeout: float = 120) -> str:
    proc = subprocess.run(
        _torchrun(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    _ok(["data", "synth", root, "--train", 60, "--eval", 20, "--seed", 3])
    return root


def test_two_processes_match_one(data: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _ok(["train", "--data", data, *SMALL, "--epochs", 1, "--out", one])
    out = _run(["train", "--data", data, *SMALL, "--epochs", 1, "--out", two, "--dist-timeout", 60])
    assert "2 processes (gloo): 4 triplets a step each" in out
    assert out.count("epoch 1:") == 1  # rank 0 alone prints
    [r1], [r2] = _records(one), _records(two)
    # the same optimizer steps and triplets an epoch, so the same triplets a step (8)
    assert (r2["steps"], r2["triplets"]) == (r1["steps"], r1["triplets"]) == (4, 32)

    # one process evaluates the 2-process checkpoint to the figure training logged, and two
    # processes (each encoding half of the entries) to the same figure
    single = tmp_path / "single.json"
    args = ["eval", two / "last.pt", "--data", data, "--split", "valid", "--workers", 0]
    _ok([*args, "--json", single])
    sharded = tmp_path / "sharded.json"
    out = _run([*args, "--json", sharded, "--dist-timeout", 60])
    assert out.count("overall (weighted)") == 1
    expected = json.loads(single.read_text())
    assert expected["overall_map"] == pytest.approx(r2["val_map"], abs=1e-9)
    got = json.loads(sharded.read_text())
    assert got["overall_map"] == pytest.approx(expected["overall_map"], abs=1e-9)
    assert got["per_attribute"] == pytest.approx(expected["per_attribute"], abs=1e-9)

    # --resume continues in both processes; a time budget stops both after the same step
    args = ["train", "--data", data, *SMALL, "--epochs", 2, "--out", two, "--resume"]
    _run([*args, "--time-budget", 0.0001, "--dist-timeout", 60])
    resumed = _records(two)[-1]
    assert resumed["epoch"] == 2 and resumed["partial"]
    assert (resumed["steps"], resumed["triplets"]) == (1, 8)


def test_stage2_trains_and_embeds_sharded(data: Path, tmp_path: Path) -> None:
    """Stage 2 under DDP (the local branch sees a crop made without gradients), then
    `asen embed` on two processes writes the file one process writes."""
    run = tmp_path / "run"
    args = ["train", "--data", data, *SMALL, "--stage", 2, "--epochs", 1, "--out", run]
    _run([*args, "--dist-timeout", 60])
    [record] = _records(run)
    assert (record["steps"], record["triplets"], record["stage"]) == (4, 32, 2)
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    args = ["embed", run / "last.pt", "--data", data, "--workers", 0]
    _ok([*args, "--out", one])
    _run([*args, "--out", two, "--dist-timeout", 60])
    a, b = np.load(one), np.load(two)
    assert a.files == b.files
    np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-6)
    for key in set(a.files) - {"embeddings"}:
        np.testing.assert_array_equal(a[key], b[key])


def _children(pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes."""
    ranks = {}
    for proc in children(pid):
        try:
            env = dict(
                item.split("=", 1)
                for item in (proc / "environ").read_text().split("\0")
                if "=" in item
            )
            ranks[int(env["RANK"])] = int(proc.name)
        except (OSError, KeyError, ValueError):
            continue
    return ranks


def _exited(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _start_long_run(data: Path, run: Path, timeout_s: float, log: Path) -> subprocess.Popen:
    """A 2-process run with many epochs, returned once its first epoch is written."""
    args = ["train", "--data", data, *SMALL, "--epochs", 1000, "--out", run]
    with log.open("w") as fh:
        proc = subprocess.Popen(
            _torchrun([*args, "--dist-timeout", timeout_s]),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the first epoch took over 60 s"
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_lost_rank_fails_the_run(data: Path, tmp_path: Path, how: str) -> None:
    """SIGKILL: torchrun sees rank 1 die, stops rank 0 and names the cause. SIGSTOP (a hung
    rank): rank 0 waits --dist-timeout (5 s) for it, then fails with one readable line."""
    log = tmp_path / "log.txt"
    proc = _start_long_run(data, tmp_path / "run", 60 if how == "killed" else 5, log)
    try:
        ranks = _children(proc.pid)
        assert sorted(ranks) == [0, 1]
        lost = time.monotonic()
        os.kill(ranks[1], signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        while not _exited(ranks[0]):
            assert time.monotonic() - lost < 30, "rank 0 still runs 30 s after rank 1 was lost"
            time.sleep(0.1)
        waited = time.monotonic() - lost
        if how == "stopped":
            assert 4 < waited < 20
            os.kill(ranks[1], signal.SIGCONT)  # so that it takes torchrun's SIGTERM
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    if how == "killed":
        assert f"Signal 9 (SIGKILL) received by PID {ranks[1]}" in out
    else:
        root_cause = out.split("Root Cause (first observed failure):")[-1]
        assert "rank      : 0" in root_cause  # rank 0 gave up on its own, within the bound
        # Rank 0 normally leaves through Python with one readable line. Seen once under load:
        # gloo aborted it from a native thread first (no Python error to print); the run
        # still failed within the timeout instead of hanging.
        if "exitcode  : 1 " in root_cause:
            assert "error: rank 0 of 2: lost contact with the other processes (" in out
            assert "did not respond within the timeout (5 s)" in out


def test_single_process_is_the_identity() -> None:
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    a = np.arange(6.0).reshape(3, 2)
    assert distributed.all_gather_array(a) is a
    assert distributed.shard(7) == slice(0, 7)
    assert distributed.any_rank(True) and not distributed.any_rank(False)
