"""Pictures: `asen explain`, overlays, the results page's fallbacks, training curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from asen.checkpoint import atomic_save, load_model, make_checkpoint
from asen.config import AttributeSpec, load_config
from asen.data.synthetic import render
from asen.model.asen import ASENPP
from asen.search import Hit, SearchIndex
from asen.train import TrainCallbacks, _plot_curves
from asen.visualize import (
    PANEL_H,
    PANEL_W,
    explain,
    overlay,
    plot_training,
    write_search_page,
)
from cli import app

runner = CliRunner()
ATTRS = [AttributeSpec("collar", 3), AttributeSpec("sleeve", 4), AttributeSpec("hem", 2)]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Untrained small stage-1 and stage-2 checkpoints and a garment image."""
    root = tmp_path_factory.mktemp("vis")
    cfg = load_config(["small"], [])
    out = {}
    for stage in (1, 2):
        torch.manual_seed(stage)
        model = ASENPP(cfg.model, len(ATTRS), stage)
        atomic_save(make_checkpoint(model, cfg, ATTRS, epoch=0, step=0), root / f"s{stage}.pt")
        out[stage] = root / f"s{stage}.pt"
    render([1, 2, 0], [3, 4, 2], rng_seed=0, image_size=160).save(root / "garment.png")
    out["image"] = root / "garment.png"
    return out


@pytest.mark.parametrize(("attr", "panels"), [("all", 4), ("sleeve", 2), ("hem,collar", 3)])
def test_explain_writes_a_png_of_the_expected_size(files, tmp_path, attr, panels) -> None:
    out = tmp_path / "e.png"
    args = ["explain", files["image"], "--model", files[2], "--attr", attr, "--out", out]
    result = runner.invoke(app, [str(a) for a in [*args, "--device", "cpu"]])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.size == (PANEL_W * panels, PANEL_H)


def test_explain_unknown_attribute_lists_the_valid_ones(files, tmp_path) -> None:
    args = ["explain", files["image"], "--model", files[2], "--attr", "sleeves"]
    result = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "e.png"]])
    assert result.exit_code == 1
    assert "unknown attribute 'sleeves'; valid: collar, sleeve, hem" in result.output


def test_explanation_maps_and_boxes(files) -> None:
    for stage in (1, 2):
        model, _ = load_model(files[stage])
        e = explain(model, files["image"], [0, 2])
        size = model.source_size
        assert e.image.shape == (3, size, size) and e.attention.shape == (2, size, size)
        assert e.attention.min() >= 0 and e.attention.max() == pytest.approx(1)
        if stage == 1:
            assert e.boxes is None
        else:
            assert e.boxes.shape == (2, 4)
            assert (e.boxes >= 0).all() and (e.boxes <= size).all()


def test_overlay_draws_the_crop_box() -> None:
    image = np.zeros((3, 64, 64), np.uint8)
    picture = np.asarray(overlay(image, np.zeros((64, 64), np.float32), np.array([8, 8, 40, 40])))
    assert (picture[8, 8:40] == 255).all() and (picture[39, 8:40] == 255).all()
    assert (picture[20, 20] < 255).any()  # inside the box: heatmap only


def test_page_shows_a_placeholder_for_a_missing_image(files, tmp_path) -> None:
    index = SearchIndex({"attribute_names": ["collar"], "data_root": str(tmp_path)}, {})
    Image.open(files["image"]).save(tmp_path / "here.png")
    hits = [Hit(1, 0.9, "here.png", 0, 1, False), Hit(2, 0.8, "gone.png", 1, 2, False)]
    page = tmp_path / "out" / "r.html"
    page.parent.mkdir()
    folder = write_search_page(
        page, files["image"], 0, hits=hits, index=index, explanation=None, subtitle="test"
    )
    text = page.read_text()
    assert text.count("<img ") == 2 and "image not available" in text and "gone.png" in text
    assert sorted(p.name for p in folder.iterdir()) == ["query.jpg", "r001.jpg"]


def _records(n: int) -> list[dict]:
    return [
        {
            "triplets": 32,
            "loss": 0.3 / (i + 1),
            "loss_global": 0.2 / (i + 1),
            "val_map": 0.3 + 0.1 * i,
            "val_per_attribute": {"collar": 0.3 + 0.1 * i, "sleeve": 0.2 + 0.1 * i},
        }
        for i in range(n)
    ]


def test_training_curves_and_a_failing_plot_never_stops_training(tmp_path, monkeypatch) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in _records(3)))
    out = plot_training(metrics)
    assert out == tmp_path / "curves.png"
    with Image.open(out) as img:
        assert img.size == (1000, 400)
    messages = []
    metrics.write_text("not json\n")
    _plot_curves(metrics, TrainCallbacks(message=messages.append))
    assert len(messages) == 1 and "curves.png" in messages[0]
