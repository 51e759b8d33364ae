"""Model versions (`asen export --model-version N|next --keep K`) and the record of generated
configs (`generated.json`, `--overwrite-edited`). The served side: tests/client/
test_versions_served.py."""

from __future__ import annotations

import json
import shutil

import pytest
from asen.export.layout import read_sidecar
from asen.export.versions import MANIFEST, VersionRequest, install, version_folders
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app

runner = CliRunner()


def staged(source, where):
    """A staged export as `export.build` leaves it before `install`: every model at version
    1, no records."""
    new = where / "new"
    shutil.copytree(source, new, ignore=shutil.ignore_patterns(MANIFEST))
    return new


def test_next_version_joins_the_kept_ones(repos, tmp_path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(repos[2], repo)
    new = staged(repos[2], tmp_path)
    lines = []
    version, carried = install(repo, new, "asen", VersionRequest("next"), lines.append)
    assert version == 2
    assert {p.as_posix() for p in carried if p.parts[0] == "asen_onnx"} == {
        "asen_onnx/1/model.json",
        "asen_onnx/1/model.onnx",
        "asen_onnx/1/model.py",
    }
    assert version_folders(new / "asen_onnx") == [1, 2]
    assert version_folders(new / "asen") == [1]  # the ensemble runs the latest encoder
    old, carried = repo / "asen_onnx/1/model.onnx", new / "asen_onnx/1/model.onnx"
    assert carried.stat().st_ino == old.stat().st_ino  # a hard link, not a copy
    meta = read_sidecar(new / "asen_onnx/2/model.onnx")
    assert meta["model_version"] == "2" and meta["exported_at"].endswith("+00:00")
    assert len(meta["checkpoint_sha256"]) == 64 and meta["asen_export"].startswith("asen ")
    record = json.loads((new / "asen_onnx" / MANIFEST).read_text())
    assert record["versions"] == [1, 2]
    assert set(record["files"]) == {"config.pbtxt", "configs/python.pbtxt"}
    assert lines == []


def test_a_version_that_does_not_fit_is_refused(repos, tmp_path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(repos[2], repo)  # stage 2, max batch 64
    new = staged(repos[1], tmp_path)  # stage 1, max batch 3: another config
    with pytest.raises(AsenError, match="asen_onnx: version 2 does not fit versions 1"):
        install(repo, new, "asen", VersionRequest("next"), print)
    new = staged(repos[1], tmp_path / "again")
    assert install(repo, new, "asen", VersionRequest("next", keep=1), print) == (2, set())
    assert version_folders(new / "asen_onnx") == [2]


def test_keep_would_prune_the_new_version(repos, tmp_path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(repos[2], repo)
    new = staged(repos[2], tmp_path)
    install(repo, new, "asen", VersionRequest("3"), print)
    shutil.rmtree(repo)
    shutil.move(new, repo)  # versions 1 and 3
    new = staged(repos[2], tmp_path)
    with pytest.raises(AsenError, match="--model-version 2 with --keep 1: asen_onnx has newer"):
        install(repo, new, "asen", VersionRequest("2", keep=1), print)


def export(checkpoint, repo, *args):
    result = runner.invoke(
        app, ["export", str(checkpoint), "--repo", str(repo), "--max-batch", "4", *args]
    )
    return result.exit_code, result.output


def test_versions_pruning_and_edited_configs(checkpoints, tmp_path) -> None:
    repo = tmp_path / "models"
    assert export(checkpoints[1], repo)[0] == 0
    code, out = export(checkpoints[1], repo, "--model-version", "next")
    assert code == 0 and "model version 2" in out, out
    assert f"wrote {repo / 'asen_onnx/2/model.onnx'}" in out
    assert "asen_onnx/1/" not in out  # carried over, not written
    assert version_folders(repo / "asen_onnx") == [1, 2]
    foreign = repo / "asen_onnx/7"  # a version asen did not write: never pruned
    shutil.copytree(repo / "asen_onnx/1", foreign)
    code, out = export(checkpoints[1], repo, "--model-version", "3", "--keep", "1")
    assert code == 0, out
    assert version_folders(repo / "asen_onnx") == [3, 7]
    assert "note: asen_onnx version 7 stays the latest" in out
    assert json.loads((repo / "asen_onnx" / MANIFEST).read_text())["versions"] == [3]

    config = repo / "asen_onnx/config.pbtxt"
    config.write_text(config.read_text().replace("count: 1", "count: 4"))
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    code, out = export(checkpoints[1], repo, "--model-version", "next")
    assert code == 1 and len(out.strip().splitlines()) == 1
    assert f"{config}: edited since asen generated it" in out and "--overwrite-edited" in out
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    code, out = export(checkpoints[1], repo, "--overwrite-edited", "--instances", "4")
    assert code == 0 and f"replacing {config}, edited since asen generated it" in out
    assert "count: 4" in config.read_text()


def test_versions_asen_did_not_write_are_never_removed(repos, tmp_path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(repos[2], repo)
    shutil.copytree(repo / "asen_onnx", repo / "asen_onnx_fp16")  # as an fp16 export left it
    (repo / "asen_onnx_fp16/5").mkdir()
    (repo / "asen_onnx_fp16/5/mine.txt").write_text("a user's version")
    new = staged(repos[2], tmp_path)  # an fp32 export: replaces version 1 of the set
    version, carried = install(repo, new, "asen", VersionRequest(), print)
    assert version_folders(new / "asen_onnx_fp16") == [5]  # its version 1 went, 5 stays
    assert (new / "asen_onnx_fp16/5/mine.txt").read_text() == "a user's version"
    assert json.loads((new / "asen_onnx_fp16" / MANIFEST).read_text())["versions"] == []
    assert "asen_onnx_fp16/5/mine.txt" in {p.as_posix() for p in carried}
