"""Training that diverges to NaN says so in one line, exits 1 and keeps the last finite
checkpoint untouched; SIGINT during set-up ends set-up at once, with nothing written."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from asen.cli import app
from asen.config import load_config
from asen.data.splits import open_dataset
from asen.train import train

runner = CliRunner()
TINY = [
    *("-c", "small", "--workers", "0", "--device", "cpu"),
    *("--set", "model.image_size=32", "--set", "model.local_size=24"),
    *("--set", "train.triplets_per_epoch=8", "--set", "train.batch_size=4"),
    *("--set", "train.micro_batch=4", "--set", "train.eval_batch_size=32"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    result = runner.invoke(
        app, ["data", "synth", str(root), "--train", "40", "--eval", "10", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    return root


def _train(*args) -> tuple[int, str]:
    result = runner.invoke(app, ["train", *TINY, *map(str, args)])
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.output


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output and lines[-1].startswith("error: "), output
    assert sum(line.startswith("error: ") for line in lines) == 1, output
    return lines[-1]


def test_a_run_diverging_from_the_start_saves_nothing(data, tmp_path) -> None:
    code, output = _train("--data", data, "--out", tmp_path / "run", "--set", "train.lr=1e30")
    line = _error_line(output)
    assert code == 1 and "training diverged: the loss is not finite" in line
    assert "nothing was saved" in line and "lower train.lr (now 1e+30)" in line
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_run_diverging_later_keeps_the_last_finite_checkpoint(data, tmp_path) -> None:
    run = tmp_path / "run"
    code, output = _train("--data", data, "--out", run, "--epochs", "1")
    assert code == 0, output
    last = (run / "last.pt").read_bytes()
    metrics = (run / "metrics.jsonl").read_text()
    poisoned = tmp_path / "poisoned"
    shutil.copytree(run, poisoned)
    ckpt = torch.load(poisoned / "last.pt", weights_only=True)
    for value in ckpt["model"].values():  # the weights a diverging step leaves
        if value.is_floating_point():
            value.fill_(float("nan"))
    torch.save(ckpt, poisoned / "last.pt")
    poisoned_bytes = (poisoned / "last.pt").read_bytes()
    code, output = _train("--data", data, "--out", poisoned, "--resume", "--epochs", "2")
    line = _error_line(output)
    assert code == 1 and "training diverged" in line and "of epoch 2" in line
    assert f"{poisoned / 'last.pt'} keeps epoch 1" in line
    assert (poisoned / "last.pt").read_bytes() == poisoned_bytes  # untouched
    assert (poisoned / "metrics.jsonl").read_text() == metrics  # no record of epoch 2
    assert (run / "last.pt").read_bytes() == last


def _slow_labels(data: Path, root: Path, pairs: int) -> Path:
    """A copy of `data` whose label file takes seconds to read: many pairs a line."""
    shutil.copytree(data, root)
    lines = [f"{i} " + " ".join(f"{i % 4} {i % 3}" for _ in range(pairs)) for i in range(40)]
    (root / "label_train.txt").write_text("\n".join(lines) + "\n")
    return root


def test_sigint_during_set_up_ends_it_at_once(data, tmp_path) -> None:
    pairs, set_up_s = 60_000, 0.0
    while set_up_s <= 1.5:  # a faster machine reads faster: grow the file until it is slow
        assert pairs <= 2_000_000, "the slow label file is not slow enough to tell"
        root = _slow_labels(data, tmp_path / f"slow{pairs}", pairs=pairs)
        began = time.monotonic()
        open_dataset(root).train_labels()
        set_up_s = time.monotonic() - began
        pairs *= 2
    cfg = load_config(["small"], ["data.workers=0"])
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    began = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, data_root=root, stage=1, run_dir=tmp_path / "run", device="cpu")
    finally:
        timer.cancel()
    assert time.monotonic() - began < 0.3 + set_up_s / 2
    assert not (tmp_path / "run" / "last.pt").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
