"""`asen index --repo`: the asen_search model added to a repository (config through the
ModelConfig protobuf, one version per gallery, the encoder recorded in the manifest), and a
gallery from another encoder refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from asen.export.repository import read_config
from asen.export.search_model import (
    INDEX_DIR,
    SEARCH_MODEL,
    SOURCE,
    add_search_model,
    encoder_identity,
    encoder_mismatch,
)
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app
from asen.search import SearchIndex

runner = CliRunner()


def _run(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _ok(*args) -> str:
    code, out = _run(*args)
    assert code == 0, out
    return out


@pytest.fixture(scope="module")
def galleries(repos, synth, tmp_path_factory) -> dict[int, Path]:
    """The test split embedded by the stage-1 and the stage-2 model."""
    root = tmp_path_factory.mktemp("galleries")
    out = {}
    for stage in (1, 2):
        out[stage] = root / f"stage{stage}.npz"
        _ok(
            "embed",
            repos[stage],
            "--backend",
            "onnx",
            "--data",
            synth,
            "--out",
            out[stage],
            "--workers",
            0,
            "--device",
            "cpu",
        )
    return out


@pytest.fixture
def repo(repos, tmp_path) -> Path:
    models = tmp_path / "models"
    shutil.copytree(repos[2], models)
    return models


def test_index_adds_a_versioned_search_model(repo, galleries, synth, tmp_path) -> None:
    out = _ok(
        "index", galleries[2], "--out", tmp_path / "i1", "--data", synth, "--ivf", "--repo", repo
    )
    assert f"{repo / SEARCH_MODEL / '1'} (model asen_search, encoder asen_onnx)" in out
    config = read_config(repo / SEARCH_MODEL / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == (SEARCH_MODEL, "python", 16)
    inputs = {t.name: t for t in config.input}
    assert list(inputs) == ["image_bytes", "image", "attribute", "k", "nprobe"]
    assert [n for n, t in inputs.items() if t.optional] == ["image_bytes", "image", "nprobe"]
    assert list(inputs["image"].dims) == [3, 128, 128]
    assert [t.name for t in config.output] == ["ids", "scores", "values", "keys", "is_query"]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["encoder_model"] == "asen_onnx" and params["index_kind"] == "ivf"
    assert params["attribute_names"] == "collar_design,sleeve_length,garment_length,pattern"
    assert params["data_root"] == str(synth.resolve())
    version = repo / SEARCH_MODEL / "1"
    assert (version / "model.py").read_bytes() == SOURCE.read_bytes()
    manifest = json.loads((version / INDEX_DIR / "manifest.json").read_text())
    assert manifest["encoder"] == encoder_identity(repo, "asen_onnx")
    assert manifest["encoder"]["precision"] == "fp32"
    assert len(manifest["encoder"]["artifact_sha256"]) == 64
    assert json.loads((tmp_path / "i1" / "manifest.json").read_text()) == manifest
    assert SearchIndex.load(version / INDEX_DIR).manifest["kind"] == "ivf"

    _ok("index", galleries[2], "--out", tmp_path / "i2", "--data", synth, "--repo", repo)
    assert sorted(p.name for p in (repo / SEARCH_MODEL).iterdir()) == ["1", "2", "config.pbtxt"]
    assert json.loads((version / INDEX_DIR / "manifest.json").read_text())["kind"] == "ivf"
    assert (
        read_config(repo / SEARCH_MODEL / "config.pbtxt").parameters["index_kind"].string_value
        == "flat"
    )
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging left


def test_gallery_of_another_encoder_is_refused(repo, galleries, synth, tmp_path) -> None:
    code, out = _run(
        "index", galleries[1], "--out", tmp_path / "i", "--data", synth, "--repo", repo
    )
    assert code == 1
    assert (
        "embeddings of dim 128, but asen_onnx makes dim 256: not a gallery of this encoder" in out
    )
    other = tmp_path / "other.npz"  # same dim, other vectors: as from another stage-2 model
    with np.load(galleries[2]) as npz:
        data = dict(npz)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal(data["embeddings"].shape).astype(np.float32)
    data["embeddings"] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.savez(other, **data)
    code, out = _run("index", other, "--out", tmp_path / "i", "--data", synth, "--repo", repo)
    assert code == 1 and len(out.strip().splitlines()) == 1
    assert f"not embedded by {repo}/asen_onnx (cosine" in out.replace("\n", "")
    assert not (repo / SEARCH_MODEL).exists() and not (tmp_path / "i").exists()


def test_repo_needs_data_and_an_encoder(repo, galleries, tmp_path) -> None:
    code, out = _run("index", galleries[2], "--out", tmp_path / "i", "--repo", repo)
    assert code == 1 and "--repo needs --data ROOT" in out
    code, out = _run(
        "index",
        galleries[2],
        "--out",
        tmp_path / "i",
        "--data",
        tmp_path,
        "--repo",
        repo,
        "--encoder",
        "asen_trt",
    )
    assert code == 1 and "asen_trt/1: no model.onnx or model.plan; --encoder names" in out


def test_encoder_mismatch_rules() -> None:
    base = {
        "model": "asen_onnx",
        "precision": "fp32",
        "checkpoint_sha256": "a" * 64,
        "artifact_sha256": "b" * 64,
    }
    assert encoder_mismatch(base, {**base, "artifact_sha256": "c" * 64}) is None  # re-export
    assert "fp16" in encoder_mismatch(base, {**base, "precision": "fp16"})
    assert "checkpoint cccccccccccc" in encoder_mismatch(
        base, {**base, "checkpoint_sha256": "c" * 64}
    )
    no_ckpt = {**base, "checkpoint_sha256": None}
    assert "artifact cccccccccccc" in encoder_mismatch(
        no_ckpt, {**no_ckpt, "artifact_sha256": "c" * 64}
    )
    assert "records no encoder" in encoder_mismatch(None, base)


def test_add_refuses_an_index_recorded_for_another_encoder(repo, galleries) -> None:
    from asen.search import load_embeddings

    split, names = load_embeddings(galleries[2])
    index = SearchIndex.build(split, names)
    other = {"checkpoint_sha256": "0" * 64, "artifact_sha256": "0" * 64}
    index.manifest["encoder"] = {**encoder_identity(repo, "asen_onnx"), **other}
    with pytest.raises(AsenError, match="embedded by asen_onnx fp32 (checkpoint|artifact) 0{12}"):
        add_search_model(repo, index, "asen_onnx")
    assert not (repo / SEARCH_MODEL).exists()


def test_compressed_ivf_gallery(repo, galleries, synth, tmp_path) -> None:
    out = tmp_path / "i"
    _ok(
        "index",
        galleries[2],
        "--out",
        out,
        "--data",
        synth,
        "--include-queries",
        "--ivf",
        "--compress",
        "sq8",
        "--repo",
        repo,
    )
    index = SearchIndex.load(repo / SEARCH_MODEL / "1" / INDEX_DIR)
    assert index.manifest["compress"] == "sq8" and index.manifest["kind"] == "ivf"
    from asen.search import load_embeddings

    split, _ = load_embeddings(galleries[2])
    for row in range(0, len(split.embeddings), 7):
        hits = index.search(split.embeddings[row], int(split.attributes[row]), 3, nprobe=1000)
        # 8-bit codes still find the item (near the top: a random model's embeddings are close)
        assert split.image_ids[row] in [h.image_id for h in hits]
    for flags, message in (
        (["--compress", "sq8"], "--compress sq8 applies to an IVF index: add --ivf"),
        (["--ivf", "--compress", "pq7"], "--compress pq7: 7 must divide the embedding dim 256"),
        (["--ivf", "--compress", "zip"], "--compress zip: expected sq8 or pq<m>"),
    ):
        code, text = _run("index", galleries[2], "--out", out, *flags)
        assert code == 1 and message in text
