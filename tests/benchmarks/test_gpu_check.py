"""scripts/gpu_check.sh on a machine without a GPU: one JSON summary, every GPU row skipped
with the reason, quickly."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
GPU_ROWS = {
    "train_cuda_fp32",
    "train_cuda_bf16",
    "ort_cuda_fp32",
    "ort_cuda_fp16",
    "served_gpu_instances",
    "trt_fp32",
    "trt_fp16",
    "trt_int8",
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the rows would run")
def test_without_a_gpu_every_row_skips_with_its_reason() -> None:
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    rows = {row["name"]: row for row in summary["rows"]}
    assert set(rows) == GPU_ROWS
    for name, row in rows.items():
        assert set(row) == {"name", "status", "reason", "figures"}, name
        assert row["status"] == "skipped", row
        assert row["figures"] == {}, row
        assert row["reason"], name
    assert "no CUDA GPU" in rows["ort_cuda_fp16"]["reason"]
    assert "TensorRT" in rows["trt_int8"]["reason"]
    assert summary["ok"] is True and summary["machine"]["gpu"] is None
    assert seconds < 60, seconds


def test_a_failed_check_fails_its_row_alone() -> None:
    from benchmarks.gpu_check import Skip, run_row

    def broken() -> dict:
        raise ValueError("first line\nthe last line")

    def missing() -> dict:
        raise Skip("no such thing here")

    failed, skipped = run_row("broken", broken), run_row("missing", missing)
    assert (failed["status"], failed["reason"]) == ("failed", "ValueError: the last line")
    assert (skipped["status"], skipped["reason"]) == ("skipped", "no such thing here")
    assert run_row("fine", lambda: {"x": 1}) == {
        "name": "fine",
        "status": "ok",
        "reason": "",
        "figures": {"x": 1},
    }
    assert run_row("off", lambda: {"failed": "too far"})["status"] == "failed"


def test_arrays_cross_a_pipe_to_the_worker_and_back() -> None:
    """The worker's framing through a real pipe (numpy's own writer needs a file position)."""
    import os

    from benchmarks.workers.ort_cuda import read_array, write_array

    sent = [np.arange(12, dtype=np.uint8).reshape(2, 6), np.array([3, 1], np.int64)]
    reader, writer = os.pipe()
    with os.fdopen(writer, "wb") as out:
        for array in sent:
            write_array(out, array)
    with os.fdopen(reader, "rb") as stream:
        got = [read_array(stream), read_array(stream)]
        assert stream.read() == b""
    for want, array in zip(sent, got, strict=True):
        assert array.dtype == want.dtype
        np.testing.assert_array_equal(array, want)
