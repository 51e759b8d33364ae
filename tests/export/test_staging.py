"""Fault injection: an export killed with SIGKILL (or failing) at every stage leaves the
previous repository byte-identical once the next export has started (stale staging rolled
back and removed), and that repository still loads in a real tritonserver."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from asen.export import staging
from asen.export.build import export_model
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app

runner = CliRunner()
ROOT = Path(__file__).parents[2]
STAGES = ["staging", "onnx", "converted", "verified", "configs", "switch-out", "switch-in"]


def tree(path: Path) -> dict[str, tuple[int, str]]:
    """Every entry under `path`: mode and content hash (files) or '' (folders)."""
    out = {}
    for p in sorted(path.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[p.relative_to(path).as_posix()] = (p.stat().st_mode, digest)
    return out


@pytest.fixture
def previous(repos, tmp_path) -> Path:
    """A repository holding an earlier export (the stage-2 model, fp32)."""
    repo = tmp_path / "models"
    shutil.copytree(repos[2], repo)
    return repo


def _export_in_subprocess(checkpoint: Path, repo: Path, fault: str) -> subprocess.CompletedProcess:
    """`asen export` of the stage-1 model, fp32 + fp16, with the fault hook set."""
    args = ["export", str(checkpoint), "--repo", str(repo), "--precision", "fp32,fp16"]
    args += ["--max-batch", "4", "--min-cosine", "0.9"]
    return subprocess.run(
        [sys.executable, "-c", "from asen.cli import main; main()", *args],
        cwd=ROOT,
        env={**os.environ, staging.FAULT_ENV: fault},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("stage", STAGES)
def test_killed_export_leaves_the_previous_repository(checkpoints, previous, stage):
    before = tree(previous)
    result = _export_in_subprocess(checkpoints[1], previous, stage)
    assert result.returncode == -9, result.stdout + result.stderr  # SIGKILL at that stage
    assert list(previous.glob(".export-*"))  # the killed export's staging is left behind
    assert staging.recover(previous)  # what the next export does first
    assert tree(previous) == before


def test_killed_after_the_switch_keeps_the_new_export(checkpoints, previous):
    result = _export_in_subprocess(checkpoints[1], previous, "switched")
    assert result.returncode == -9
    staging.recover(previous)
    assert not list(previous.glob(".export-*"))
    assert (previous / "asen_onnx_fp16" / "1" / "model.onnx").is_file()  # the new set, whole
    assert '"stage": "1"' in (previous / "asen_onnx" / "1" / "model.json").read_text()


@pytest.mark.parametrize("stage", STAGES)
def test_failing_export_is_one_line_and_changes_nothing(checkpoints, previous, monkeypatch, stage):
    monkeypatch.setenv(staging.FAULT_ENV, f"{stage}:fail")
    before = tree(previous)
    result = runner.invoke(
        app, ["export", str(checkpoints[1]), "--repo", str(previous), "--max-batch", "4"]
    )
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]  # after the progress lines
    assert last.startswith("error:") and "the repository is unchanged" in last, result.output
    assert tree(previous) == before


def test_next_export_cleans_stale_staging_and_keeps_live_ones(checkpoints, previous):
    stale = previous / ".export-stale"
    (stale / "new" / "asen_onnx").mkdir(parents=True)
    (stale / staging.LOCK).write_text("")
    live = staging.Staging(previous)  # another export, still running
    try:
        result = runner.invoke(
            app, ["export", str(checkpoints[1]), "--repo", str(previous), "--max-batch", "4"]
        )
        assert result.exit_code == 0, result.output
        assert "removed .export-stale, left by an interrupted export" in result.output
        assert not stale.exists() and live.path.exists()
    finally:
        live.close()
    assert not list(previous.glob(".export-*"))


def test_folder_with_foreign_files_is_refused(checkpoints, previous):
    (previous / "asen_onnx" / "notes.txt").write_text("mine")
    before = tree(previous)
    result = runner.invoke(app, ["export", str(checkpoints[1]), "--repo", str(previous)])
    assert result.exit_code == 1
    assert "holds notes.txt, which asen did not write" in result.output
    assert tree(previous) == before


def test_unwritable_repository_is_one_line(checkpoints, previous, monkeypatch):
    """Read-only: real permissions where this test is not root, else the same error from
    the operating system injected (root ignores permissions)."""
    before = tree(previous)
    if os.geteuid() != 0:
        previous.chmod(0o555)
    else:

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    try:
        result = runner.invoke(app, ["export", str(checkpoints[1]), "--repo", str(previous)])
    finally:
        previous.chmod(0o755)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot write to the model repository" in lines[0]
    assert tree(previous) == before


def test_switch_failure_rolls_back(previous, tmp_path):
    """A rename failing halfway through the switch (e.g. a folder that cannot be moved)
    puts every folder back."""
    before = tree(previous)
    stage = staging.Staging(previous)
    try:
        for model in ("asen", "asen_onnx", "asen_zzz"):
            (stage.new / model / "1").mkdir(parents=True)
        (stage.new / "asen_zzz" / "1" / "x").write_text("new")
        real = os.replace
        calls = []

        def flaky(src, dst):
            calls.append(src)
            if len(calls) == 5:
                raise OSError(errno.EACCES, "Permission denied")
            real(src, dst)

        os.replace = flaky
        try:
            with pytest.raises(AsenError, match="cannot switch the export in .*unchanged"):
                stage.switch(["asen", "asen_onnx", "asen_preprocess", "asen_zzz"])
        finally:
            os.replace = real
    finally:
        stage.close()
    assert tree(previous) == before


def test_recovered_repository_is_servable(checkpoints, previous, tmp_path):
    """After a kill in the middle of the switch and the recovery, the real tritonserver
    loads the repository and serves the previous model."""
    from asen.client.server import free_port, start_server

    result = _export_in_subprocess(checkpoints[1], previous, "switch-in")
    assert result.returncode == -9
    staging.recover(previous)
    ports = {k: free_port() for k in ("http_port", "grpc_port", "metrics_port")}
    with start_server(previous, log_file=tmp_path / "server.log", **ports) as handle:
        ready = {m["name"] for m in handle.index() if m.get("state") == "READY"}
    assert {"asen", "asen_onnx", "asen_preprocess"} <= ready


def test_export_model_api_removes_what_it_replaced(checkpoints, previous):
    lines: list[str] = []
    export_model(
        checkpoints[1],
        previous,
        precisions=["fp16"],
        max_batch=4,
        min_cosine=0.9,
        report=lines.append,
    )
    assert not (previous / "asen_onnx").exists()  # the earlier fp32 model of this name
    assert any("removed" in line and "asen_onnx" in line for line in lines)
    assert (previous / "asen_onnx_fp16" / "config.pbtxt").is_file()
