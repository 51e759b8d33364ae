"""Pictures: `asen explain`, overlays, the results page's fallbacks, training curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from asen import AsenError
from asen.checkpoint import atomic_save, load_model, make_checkpoint
from asen.cli import app
from asen.config import AttributeSpec, load_config
from asen.data.synthetic import render
from asen.model.asen import ASENPP
from asen.page_files import MANIFEST
from asen.search import Hit, SearchIndex
from asen.train import TrainCallbacks, _plot_curves
from asen.training.run_folder import RunFolder
from asen.visualize import (
    PANEL_H,
    PANEL_W,
    explain,
    overlay,
    plot_training,
    write_search_page,
)

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
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "query.jpg", "r001.jpg"]


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
    _plot_curves(RunFolder(tmp_path), TrainCallbacks(message=messages.append))
    assert len(messages) == 1 and "curves.png" in messages[0]


# ------------------------------------------------------------------ the page's images folder


def _page(files: dict, root, page, hits: int = 2):
    """Write a results page over `hits` copies of the garment image under `root`."""
    index = SearchIndex({"attribute_names": ["collar"], "data_root": str(root)}, {})
    Image.open(files["image"]).save(root / "here.png")
    found = [Hit(r, 1 - r / 10, "here.png", r, 1, False) for r in range(1, hits + 1)]
    return write_search_page(
        page, files["image"], 0, hits=found, index=index, explanation=None, subtitle="t"
    )


def test_a_folder_asen_did_not_make_is_refused_and_kept(files, tmp_path) -> None:
    page = tmp_path / "results.html"
    mine = tmp_path / "results_files"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(AsenError, match="not made by asen search") as e:
        _page(files, tmp_path, page)
    assert "\n" not in str(e.value)
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"] and not page.exists()


def test_a_plain_file_where_the_folder_goes_is_one_line(files, tmp_path) -> None:
    page = tmp_path / "results.html"
    (tmp_path / "results_files").write_text("a file, not a folder")
    with pytest.raises(AsenError, match="exists and is not a folder"):
        _page(files, tmp_path, page)
    assert (tmp_path / "results_files").read_text() == "a file, not a folder"


def test_a_page_name_that_is_a_folder_is_one_line(files, tmp_path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(AsenError, match="is a folder"):
        _page(files, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out_files").exists()


def test_rewriting_a_page_replaces_only_what_asen_wrote(files, tmp_path) -> None:
    page = tmp_path / "r.html"
    folder = _page(files, tmp_path, page, hits=3)
    assert sorted(json.loads((folder / MANIFEST).read_text())["files"]) == [
        "query.jpg",
        "r001.jpg",
        "r002.jpg",
        "r003.jpg",
    ]
    (folder / "notes.txt").write_text("mine")  # a user's file inside asen's folder
    _page(files, tmp_path, page, hits=1)
    assert sorted(p.name for p in folder.iterdir()) == [
        MANIFEST,
        "notes.txt",
        "query.jpg",
        "r001.jpg",
    ]
    assert (folder / "notes.txt").read_text() == "mine"
    assert "r002.jpg" not in page.read_text()
    assert not list(tmp_path.glob(".asen-tmp-*")) and not list(folder.glob(".asen-tmp-*"))


def test_a_file_asen_did_not_write_is_never_overwritten(files, tmp_path) -> None:
    page = tmp_path / "r.html"
    folder = _page(files, tmp_path, page, hits=1)
    (folder / "r002.jpg").write_bytes(b"the user's own picture")
    with pytest.raises(AsenError, match="not written by asen"):
        _page(files, tmp_path, page, hits=2)
    assert (folder / "r002.jpg").read_bytes() == b"the user's own picture"


def test_another_pages_folder_is_refused(files, tmp_path) -> None:
    _page(files, tmp_path, tmp_path / "r.html")
    with pytest.raises(AsenError, match="holds the images of r.html"):
        _page(files, tmp_path, tmp_path / "r.htm")  # the same r_files/ folder


def test_search_html_checks_the_page_before_searching(tmp_path) -> None:
    (tmp_path / "page_files").mkdir()
    (tmp_path / "page_files" / "keep.txt").write_text("keep")
    for html_arg in (tmp_path / "page.html", tmp_path):  # a foreign folder; a folder as page
        args = ["search", "q.png", "--attr", "a", "--index", tmp_path / "no-index"]
        result = runner.invoke(app, [str(a) for a in [*args, "--html", html_arg]])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
        assert "no-index" not in result.output  # refused before the index is even opened
    assert (tmp_path / "page_files" / "keep.txt").read_text() == "keep"
