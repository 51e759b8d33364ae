"""Fault injection: training killed with SIGKILL at chosen moments (the test hook
`ASEN_TEST_FAULT`, asen/training/faults.py) resumes to the result of an uninterrupted run,
with metrics.jsonl and the checkpoints in step; a second run on the same --out is refused;
SIGTERM finishes the step and saves.

Runs are children of a forkserver that imported asen once, so each starts in moments."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from typer.testing import CliRunner

from asen.checkpoint import load_checkpoint
from asen.cli import app
from asen.training.faults import ENV

TINY = [
    *("-c", "small", "--workers", "0"),
    *("--set", "model.image_size=32", "--set", "model.local_size=24"),
    *("--set", "train.triplets_per_epoch=8", "--set", "train.batch_size=4"),
    *("--set", "train.micro_batch=4", "--set", "train.eval_batch_size=32"),
]
TIMINGS = ("triplets_per_s", "data_wait_s", "elapsed_s")  # the only fields that may differ
_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(["asen.cli", "asen.train"])


def _child(args: list[str], fault: str | None, log: str, session: bool = False) -> None:
    """A training process: `asen ARGS` with the fault hook set (in a process group of its
    own with `session`, as a shell job or a Slurm step is)."""
    multiprocessing.set_start_method("fork", force=True)  # DataLoader workers as in `asen`
    if session:
        os.setsid()
    if fault:
        os.environ[ENV] = fault
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from asen.cli import app

    try:
        app(args, prog_name="asen", standalone_mode=True)
    except SystemExit as e:
        sys.exit(e.code)


def _start(
    args: list, fault: str | None, log: Path, session: bool = False
) -> multiprocessing.Process:
    proc = _ctx.Process(target=_child, args=([str(a) for a in args], fault, str(log), session))
    proc.start()
    return proc


def _train(args: list, log: Path, fault: str | None = None) -> int:
    proc = _start(args, fault, log)
    proc.join(120)
    assert proc.exitcode is not None, "a training child took over 120 s"
    return proc.exitcode


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(
        app, ["data", "synth", str(root), "--train", "40", "--eval", "10", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    return root


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def _assert_close(a, b, where: str = "records") -> None:
    """Equal structure; numbers equal within float noise."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6), where
    else:
        assert a == b, where


def _in_step(run: Path) -> list[dict]:
    """metrics.jsonl never holds a record the checkpoint does not: it is the checkpoint's
    records or, after a kill between the two writes, one fewer. Returns the checkpoint's."""
    saved = load_checkpoint(run / "last.pt")["records"] if (run / "last.pt").exists() else []
    written = _records(run) if (run / "metrics.jsonl").exists() else []
    assert written == saved[: len(written)] and len(saved) - len(written) in (0, 1)
    return saved


def _assert_same_run(run: Path, reference: Path) -> None:
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(run / "last.pt")
    assert (b["epoch"], b["step"]) == (a["epoch"], a["step"])
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, msg=key)
    assert a["scheduler"] == b["scheduler"]
    _assert_close(_untimed(_records(reference)), _untimed(_records(run)))
    assert _records(run) == b["records"]
    best_a, best_b = load_checkpoint(reference / "best.pt"), load_checkpoint(run / "best.pt")
    assert best_b["epoch"] == best_a["epoch"]


def test_killed_anywhere_resumes_to_the_uninterrupted_result(data: Path, tmp_path: Path) -> None:
    """Eight SIGKILLs in a row, each at another point of a 3-epoch run (2 steps an epoch),
    and the run still ends with the weights, records and best.pt of an uninterrupted one."""
    log = tmp_path / "log.txt"
    base = ["train", "--data", data, *TINY, "--epochs", 3]
    reference = tmp_path / "reference"
    assert _train([*base, "--out", reference], log) == 0, log.read_text()
    assert [r["epoch"] for r in _records(reference)] == [1, 2, 3]

    run = tmp_path / "run"
    chain = [  # (fault, resume?, what the kill leaves)
        ("kill@best#1", False, "nothing saved, a temporary best.pt"),
        ("kill@last#1", False, "best.pt, no last.pt: a fresh run starts over"),
        ("kill@step#3", False, "epoch 1 saved; killed inside epoch 2's first step"),
        ("kill@last#1", True, "epoch 2's last.pt not switched in"),
        ("kill@saved#1", True, "epoch 2 saved, its record not yet in metrics.jsonl"),
        ("kill@metrics#1", True, "killed bringing metrics.jsonl in step at the start"),
        ("kill@metrics#2", True, "epoch 3 saved, killed writing metrics.jsonl"),
        ("kill@step#1", True, "nothing left to train: not reached"),
    ]
    for fault, resume, what in chain:
        code = _train([*base, "--out", run, *(["--resume"] if resume else [])], log, fault)
        assert code in (-signal.SIGKILL, 0), f"{fault}: exit {code}\n{log.read_text()}"
        saved = _in_step(run)
        if fault == "kill@step#1":
            assert code == 0  # a run already complete trains no step
        else:
            assert code == -signal.SIGKILL, what
        if fault == "kill@saved#1":
            assert len(saved) == 2 and len(_records(run)) == 1, what
    assert not list(run.glob(".asen-tmp-*"))  # the last start removed the killed temporaries
    _assert_same_run(run, reference)


def _wait_stopped(proc: multiprocessing.Process, log: Path) -> None:
    deadline = time.monotonic() + 60
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert proc.is_alive(), log.read_text()
        assert time.monotonic() < deadline, "the run did not reach its pause point"
        time.sleep(0.05)


def test_second_run_refused_and_sigterm_saves(data: Path, tmp_path: Path) -> None:
    """A run paused inside its third step holds --out: a second run there is refused with
    one line. SIGTERM then lets it finish the step, validate and save a partial epoch, and
    --resume continues from there."""
    log, run = tmp_path / "log.txt", tmp_path / "run"
    args = ["train", "--data", data, *TINY, "--epochs", 3, "--out", run]
    proc = _start(args, "stop@step#3", log)
    try:
        _wait_stopped(proc, log)
        second = CliRunner().invoke(app, [str(a) for a in args])
        assert second.exit_code == 1
        assert "another asen train is running in this folder" in second.output
        assert len(second.output.strip().splitlines()) == 1
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGCONT)
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0, log.read_text()
    assert "stopped by SIGTERM" in log.read_text()
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 1)  # epoch 1 done, epoch 2's first step done
    assert [(r["epoch"], r["partial"]) for r in _records(run)] == [(1, False), (2, True)]
    assert _train([*args, "--resume"], log) == 0, log.read_text()
    assert [(r["epoch"], r["partial"]) for r in _records(run)][-2:] == [(2, False), (3, False)]


# ------------------------------------------------- a stop signal to the whole process group


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run (2 steps an epoch)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    log = run.with_name("log.txt")
    args = ["train", "--data", data, *TINY, "--epochs", 3, "--out", run]
    assert _train(args, log) == 0, log.read_text()
    return run


def _assert_same_model(run: Path, reference: Path) -> None:
    """The run ends where the uninterrupted one does: position, weights, schedule, and the
    last validation (records differ by the partial epoch's own record)."""
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(run / "last.pt")
    assert (b["epoch"], b["step"]) == (a["epoch"], a["step"])
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, msg=key)
    assert a["scheduler"] == b["scheduler"]
    assert _records(run)[-1]["val_map"] == pytest.approx(_records(reference)[-1]["val_map"])


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_group_signal_saves_the_partial_epoch_and_resume_ends_as_uninterrupted(
    data: Path, tmp_path: Path, reference: Path, sig: signal.Signals
) -> None:
    """`timeout`, Slurm and systemd signal the whole process group, DataLoader workers
    included. The workers ignore it; the main process finishes its step, validates, saves
    the partial epoch (metrics.jsonl record and last.pt), stops its workers and exits 0
    (130 for SIGINT) without a traceback. --resume then ends where an uninterrupted run
    ends."""
    log, run = tmp_path / "log.txt", tmp_path / "run"
    args = ["train", "--data", data, *TINY, "--workers", 2, "--epochs", 3, "--out", run]
    proc = _start(args, "stop@step#3", log, session=True)
    try:
        _wait_stopped(proc, log)  # paused inside epoch 2's first step, its workers running
        children = psutil.Process(proc.pid).children(recursive=True)
        workers = [c for c in children if c.name() == "pt_data_worker"]
        assert len(workers) == 2, children
        os.killpg(proc.pid, sig)
        os.killpg(proc.pid, signal.SIGCONT)
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.kill()
    text = log.read_text()
    assert proc.exitcode == (130 if sig == signal.SIGINT else 0), text
    assert "Traceback" not in text and "killed by signal" not in text, text
    assert f"stopped by {sig.name}" in text
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, alive  # the main process stopped its workers before it ended
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 1)
    assert [(r["epoch"], r["partial"]) for r in _records(run)] == [(1, False), (2, True)]
    assert _train([*args, "--resume"], log) == 0, log.read_text()
    assert [(r["epoch"], r["partial"]) for r in _records(run)][-2:] == [(2, False), (3, False)]
    _assert_same_model(run, reference)
