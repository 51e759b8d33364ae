"""Hostile values through the CLI: a Unicode digit as `--attr` of `asen search` and
`asen explain`, a checkpoint whose config is a shared-reference bomb, `-c small` beside a
folder named `small`, and `asen app --max-upload-mb nan|inf`. Each is one `error:` line and
exit 1, at once."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from asen.checkpoint import atomic_save, make_checkpoint
from asen.cli import app
from asen.config import AttributeSpec, load_config
from asen.evaluate import EmbeddedSplit
from asen.model.asen import ASENPP
from asen.search import SearchIndex

runner = CliRunner()
ATTRIBUTES = [AttributeSpec("collar", 3), AttributeSpec("sleeve", 4)]


def _one_error_line(args: list, *words: str) -> str:
    began = time.monotonic()
    result = runner.invoke(app, [str(a) for a in args])
    assert time.monotonic() - began < 30
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = load_config(["small"], ["model.image_size=32", "model.local_size=24"])
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    atomic_save(make_checkpoint(ASENPP(cfg.model, 2, 1), cfg, ATTRIBUTES), path)
    return path


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "q.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize("attr", ["²", "³", "collar,²", "٣"])
def test_explain_attr_unicode_digit(checkpoint, image, tmp_path, attr: str) -> None:
    out = tmp_path / "x.png"
    _one_error_line(
        ["explain", image, "--model", checkpoint, "--out", out, "--attr", attr, "--device", "cpu"],
        "unknown attribute",
        "valid: collar, sleeve",
    )
    assert not out.exists()


@pytest.mark.parametrize("attr", ["²", "³"])
def test_search_attr_unicode_digit(checkpoint, image, tmp_path, attr: str) -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((20, 8)).astype(np.float32)
    split = EmbeddedSplit(
        embeddings=emb / np.linalg.norm(emb, axis=1, keepdims=True),
        image_ids=np.arange(20),
        attributes=np.arange(20) % 2,
        values=np.zeros(20, np.int64),
        is_query=np.zeros(20, bool),
        paths=[f"{i}.png" for i in range(20)],
    )
    SearchIndex.build(split, ["collar", "sleeve"]).save(tmp_path / "idx")
    _one_error_line(
        ["search", image, "--index", tmp_path / "idx", "--attr", attr, "--model", checkpoint],
        "unknown attribute",
    )


def test_a_checkpoint_config_bomb_is_one_line(tmp_path, image) -> None:
    cfg = load_config(["small"], ["model.image_size=32", "model.local_size=24"])
    ckpt = make_checkpoint(ASENPP(cfg.model, 2, 1), cfg, ATTRIBUTES)
    lr: list = []
    for _ in range(80):  # 2**80 leaves when expanded; a few hundred bytes in the file
        lr = [lr, lr]
    ckpt["config"]["train"]["lr"] = lr
    atomic_save(ckpt, tmp_path / "bomb.pt")
    _one_error_line(
        ["explain", image, "--model", tmp_path / "bomb.pt", "--out", tmp_path / "x.png"],
        "damaged asen checkpoint (checkpoint config: nested more than",
    )


def test_packaged_config_beside_a_folder_of_its_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small").mkdir()
    line = _one_error_line(
        ["train", "-c", "small", "--data", tmp_path / "nowhere", "--out", tmp_path / "run"],
        "nowhere",
    )
    assert "dataset root not found" in line and "config file" not in line


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_app_max_upload_mb_not_finite(value: str) -> None:
    _one_error_line(["app", "--max-upload-mb", value], f"--max-upload-mb {float(value)}: must be")
