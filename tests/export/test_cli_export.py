"""`asen export` and `asen eval --backend onnx` via the CLI: results, errors, no partial files."""

from __future__ import annotations

import importlib.util
import json
import shutil

import asen.export.build
import pytest
import torch
from asen.export.verify import Tolerance
from typer.testing import CliRunner

from asen.cli import app

runner = CliRunner()
TRT_READY = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def files_under(path):
    return sorted(p for p in path.rglob("*")) if path.exists() else []


def test_export_prints_and_replaces(checkpoints, tmp_path):
    repo = tmp_path / "models"
    for _ in range(2):  # the second export replaces the first in place
        result = runner.invoke(
            app, ["export", str(checkpoints[1]), "--repo", str(repo), "--max-batch", "8"]
        )
        assert result.exit_code == 0, result.output
    assert "ONNX Runtime fp32 vs PyTorch fp32: max abs diff" in result.output
    assert f"wrote {repo / 'asen_onnx' / '1' / 'model.onnx'}" in result.output
    assert [p.relative_to(repo).as_posix() for p in files_under(repo)] == [
        "asen",  # the Triton ensemble, preprocessing model and configs (export.repository)
        "asen/1",
        "asen/config.pbtxt",
        "asen/generated.json",  # the sha256 of each config asen wrote, and its versions
        "asen_onnx",
        "asen_onnx/1",
        "asen_onnx/1/model.json",
        "asen_onnx/1/model.onnx",
        "asen_onnx/1/model.py",
        "asen_onnx/config.pbtxt",
        "asen_onnx/configs",
        "asen_onnx/configs/python.pbtxt",
        "asen_onnx/generated.json",
        "asen_onnx/warmup",  # the real image Triton warms the model on (export.warmup)
        "asen_onnx/warmup/image",
        "asen_preprocess",
        "asen_preprocess/1",
        "asen_preprocess/1/model.py",
        "asen_preprocess/config.pbtxt",
        "asen_preprocess/generated.json",
        "asen_preprocess/warmup",
        "asen_preprocess/warmup/image_bytes",
    ]


@pytest.mark.parametrize("existing", [False, True])
def test_failed_verification_leaves_nothing(checkpoints, repos, tmp_path, monkeypatch, existing):
    monkeypatch.setattr(asen.export.build, "ONNX_TOLERANCE", Tolerance(1.5, 0.0))  # impossible
    repo = tmp_path / "new" / "models"  # created for the export, removed again
    if existing:
        repo = tmp_path / "models"
        shutil.copytree(repos[2], repo)  # an earlier export must survive unchanged
    before = {p: p.read_bytes() if p.is_file() else None for p in files_under(tmp_path)}
    result = runner.invoke(app, ["export", str(checkpoints[1]), "--repo", str(repo)])
    assert result.exit_code == 1
    assert "parity check failed: max abs diff" in result.output
    assert "nothing was written" in result.output
    assert {p: p.read_bytes() if p.is_file() else None for p in files_under(tmp_path)} == before


CASES = {  # case: (checkpoint, extra arguments, expected message)
    "missing": ("missing", [], "checkpoint not found"),
    "truncated": ("truncated", [], "not a readable checkpoint (truncated or corrupt"),
    "foreign": ("foreign", [], "not an asen checkpoint"),
    "repo-is-file": ("good", [], "is a file, not a model repository folder"),
    "repo-under-file": ("good", [], "cannot create the model repository"),
    "max-batch-0": ("good", ["--max-batch", "0"], "--max-batch 0: must be at least 1"),
    "trt-missing": ("good", ["--trt"], "TensorRT needs TensorRT 10 or 11 and a CUDA GPU"),
    "bad-name": ("good", ["--name", "a/b"], "--name 'a/b'"),
    "unknown-precision": ("good", ["--precision", "fp32,bf16"], "--precision bf16: unknown"),
    "int8-uncalibrated": ("good", ["--precision", "int8"], "int8 needs calibration images"),
    "calibrate-missing": ("good", ["--precision", "int8", "--calibrate", "nope"], "not found"),
    "calibrate-too-few": ("good", ["--precision", "int8", "--calibrate", "SYNTH"], "fewer than"),
    "calibrate-undecodable": (
        "good",
        ["--precision", "int8", "--calibrate", "BROKEN", "--calibration-images", "4"],
        "cannot decode image",
    ),
    "calibrate-attributes": (
        "good",
        ["--precision", "int8", "--calibrate", "OTHER", "--calibration-images", "4"],
        "do not match the checkpoint's",
    ),
    "verify-attributes": ("good", ["--verify", "OTHER"], "do not match the checkpoint's"),
    "max-map-drop": ("good", ["--max-map-drop", "2"], "--max-map-drop 2.0: must be between"),
    "calibration-images-0": (
        "good",
        ["--precision", "int8", "--calibrate", "SYNTH", "--calibration-images", "0"],
        "--calibration-images 0: must be at least 1",
    ),
}


def _datasets(tmp_path, synth) -> dict[str, str]:
    """SYNTH: the synthetic split (10 train images); BROKEN: the same with undecodable train
    images; OTHER: the same with other attribute value counts."""
    out = {"SYNTH": str(synth)}
    for kind in ("BROKEN", "OTHER"):
        root = tmp_path / "data" / kind.lower()
        shutil.copytree(synth, root)
        out[kind] = str(root)
    for image in (tmp_path / "data" / "broken" / "images").rglob("*"):
        if image.is_file() and "train" in image.as_posix():
            image.write_bytes(b"not an image")
    (tmp_path / "data" / "other" / "dataset.yaml").write_text(
        "attributes: [{name: a, values: 3}, {name: b, values: 9}]\n"
    )
    return out


def _checkpoint(tmp_path, good, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "good":
        return good
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "foreign":
        torch.save({"state_dict": {}}, path)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_writes_nothing(checkpoints, synth, tmp_path, case):
    kind, extra, expected = CASES[case]
    roots = _datasets(tmp_path, synth)
    extra = [roots.get(a, a) for a in extra]
    if case == "trt-missing" and TRT_READY:
        pytest.skip("TensorRT and a CUDA GPU are both present here")
    ckpt = _checkpoint(tmp_path, checkpoints[1], kind)
    repo = tmp_path / "models"
    if case == "repo-is-file":
        repo.write_text("x")
    elif case == "repo-under-file":
        (tmp_path / "file").write_text("x")
        repo = tmp_path / "file" / "models"
    before = files_under(tmp_path)
    result = runner.invoke(app, ["export", str(ckpt), "--repo", str(repo), *extra])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.output
    assert files_under(tmp_path) == before


def test_eval_onnx_equals_torch(checkpoints, repos, synth, tmp_path):
    figures = {}
    for backend, model in (("torch", checkpoints[2]), ("onnx", repos[2])):
        out = tmp_path / f"{backend}.json"
        result = runner.invoke(
            app,
            [
                "eval",
                str(model),
                "--data",
                str(synth),
                "--backend",
                backend,
                "--json",
                str(out),
                "--workers",
                "0",
                "--device",
                "cpu",
            ],
        )
        assert result.exit_code == 0, result.output
        figures[backend] = json.loads(out.read_text())
    assert figures["onnx"]["backend"] == "onnx"
    assert abs(figures["onnx"]["overall_map"] - figures["torch"]["overall_map"]) <= 0.001
    for name, value in figures["torch"]["per_attribute"].items():
        assert abs(figures["onnx"]["per_attribute"][name] - value) <= 0.001


def test_eval_bad_artifact_is_one_line(tmp_path, synth):
    result = runner.invoke(app, ["eval", str(tmp_path), "--data", str(synth), "--backend", "onnx"])
    assert result.exit_code == 1
    assert "no model.onnx in this model repository" in result.output
