"""Search: per-attribute FAISS indexes, `asen index` / `asen search`, the results page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app
from asen.evaluate import EmbeddedSplit
from asen.search import SearchIndex, attribute_id, load_embeddings

runner = CliRunner()
SMALL = ["-c", "small", "--set", "train.triplets_per_epoch=8", "--set", "train.batch_size=4"]
CHROMIUM = shutil.which("chromium")


def _ok(args: list) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _random_split(n: int, dim: int, attributes: int, seed: int = 0) -> EmbeddedSplit:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return EmbeddedSplit(
        embeddings=emb,
        image_ids=np.arange(n, dtype=np.int64),
        attributes=rng.integers(0, attributes, n),
        values=rng.integers(0, 3, n),
        is_query=np.arange(n) < n // 5,
        paths=[f"img/{i}.png" for i in range(n)],
    )


@pytest.mark.parametrize("ivf", [False, True])
def test_gallery_entry_finds_itself_first_and_survives_save(tmp_path, ivf) -> None:
    split = _random_split(3000, 32, 2)
    index = SearchIndex.build(split, ["a", "b"], ivf=ivf, nprobe=1000)
    assert index.manifest["counts"] == list(np.bincount(split.attributes[~split.is_query]))
    index.save(tmp_path / "idx")
    loaded = SearchIndex.load(tmp_path / "idx")
    for row in np.flatnonzero(~split.is_query)[:20]:
        a = int(split.attributes[row])
        hits = loaded.search(split.embeddings[row], a, k=3)
        assert hits[0].image_id == row and hits[0].path == f"img/{row}.png"
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].value == split.values[row] and not hits[0].is_query
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    if ivf:
        for nlist, count in zip(loaded.manifest["nlist"], loaded.manifest["counts"], strict=True):
            assert 1 < nlist <= min(np.sqrt(count) + 1, count / 39)


def test_queries_are_left_out_unless_asked(tmp_path) -> None:
    split = _random_split(200, 8, 1)
    query = int(np.flatnonzero(split.is_query)[0])
    without = SearchIndex.build(split, ["a"])
    assert all(h.image_id != query for h in without.search(split.embeddings[query], 0, 200))
    with_queries = SearchIndex.build(split, ["a"], include_queries=True)
    first = with_queries.search(split.embeddings[query], 0, 1)[0]
    assert first.image_id == query and first.is_query
    assert with_queries.manifest["counts"] == [200]


def test_clear_errors(tmp_path) -> None:
    with pytest.raises(AsenError, match="unknown attribute 'sleeve'; valid: collar, length"):
        attribute_id("sleeve", ["collar", "length"])
    assert attribute_id("1", ["collar", "length"]) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    index = SearchIndex.build(_random_split(50, 8, 1), ["a"])
    with pytest.raises(AsenError, match="not an index folder"):
        index.save(tmp_path / "other")
    with pytest.raises(AsenError, match="no manifest.json"):
        SearchIndex.load(tmp_path / "other")
    with pytest.raises(AsenError, match="dim 4, the index 8"):
        index.search(np.zeros(4, np.float32), 0)
    np.savez(tmp_path / "x.npz", embeddings=np.zeros((2, 3)))
    with pytest.raises(AsenError, match="missing image_ids"):
        load_embeddings(tmp_path / "x.npz")


# --- through the CLI, on a tiny synthetic dataset and a stage-2 model trained a few steps


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("search")
    data, run = root / "data", root / "run"
    _ok(["data", "synth", data, "--train", 60, "--eval", 20, "--seed", 5])
    _ok(
        ["train", "--data", data, *SMALL, "--stage", 2, "--epochs", 1, "--out", run, "--workers", 0]
    )
    model = run / "best.pt"
    _ok(["embed", model, "--data", data, "--out", root / "test.npz", "--workers", 0])
    _ok(["index", root / "test.npz", "--out", root / "index", "--data", data])
    return {"root": root, "data": data, "run": run, "model": model, "index": root / "index"}


def _search(world: dict, image: Path, attr: str, top: int, *extra) -> list[dict]:
    out = world["root"] / "hits.json"
    _ok(
        ["search", image, "--attr", attr, "--index", world["index"], "--model", world["model"]]
        + ["--top", top, "--json", out, "--device", "cpu", *extra]
    )
    return json.loads(out.read_text())


def test_training_draws_curves(world) -> None:
    curves = world["run"] / "curves.png"
    assert curves.stat().st_size > 10_000 and curves.read_bytes()[:4] == b"\x89PNG"


def test_searching_a_gallery_image_finds_it_first(world) -> None:
    split, names = load_embeddings(world["root"] / "test.npz")
    row = int(np.flatnonzero(~split.is_query)[0])
    hits = _search(world, world["data"] / split.paths[row], names[split.attributes[row]], 3)
    assert hits[0]["path"] == split.paths[row] and hits[0]["score"] == pytest.approx(1, abs=1e-4)


def test_precision_at_5_matches_the_embeddings(world) -> None:
    split, names = load_embeddings(world["root"] / "test.npz")
    q, c = split.is_query, ~split.is_query
    for a, name in enumerate(names):
        queries = np.flatnonzero(q & (split.attributes == a))
        cands = np.flatnonzero(c & (split.attributes == a))
        scores = split.embeddings[queries] @ split.embeddings[cands].T
        top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        expected = (split.values[cands][top5] == split.values[queries][:, None]).mean()
        found = []
        for i in queries:
            hits = _search(world, world["data"] / split.paths[i], name, 5)
            found.append(np.mean([h["value"] == split.values[i] for h in hits]))
        assert np.mean(found) == pytest.approx(expected), name


def test_unknown_attribute_lists_the_valid_ones(world) -> None:
    image = next((world["data"] / "images" / "test").iterdir())
    result = runner.invoke(
        app,
        [
            "search",
            str(image),
            "--attr",
            "hem",
            "--index",
            str(world["index"]),
            "--model",
            str(world["model"]),
        ],
    )
    assert result.exit_code == 1
    assert "unknown attribute 'hem'; valid: collar_design, sleeve_length" in result.output


def _chromium(url: str, *args: str) -> str:
    """Headless Chromium's output for `url`. Chromium sometimes does its work (prints the
    whole DOM, writes the screenshot) and then hangs on its way out, as on a loaded CI
    machine: after 60 s it is killed and what it printed is returned; the caller's checks
    of the DOM or the screenshot decide."""
    with tempfile.TemporaryDirectory() as profile:
        try:
            run = _run_chromium(profile, url, *args)
        except subprocess.TimeoutExpired as e:
            return (e.stdout or b"").decode()  # bytes even with text=True
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def _run_chromium(profile: str, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs it)"
)
def test_results_page_shows_every_image_in_chromium(world, tmp_path) -> None:
    image = next((world["data"] / "images" / "test").iterdir())
    page = world["root"] / "page" / "results.html"
    _search(world, image, "collar_design", 6, "--html", page)
    moved = tmp_path / "moved"  # the page works when moved with its folder
    shutil.copytree(page.parent, moved)
    dom = _chromium((moved / "results.html").as_uri(), "--dump-dom")
    check = re.search(r'id="image-check" data-images="(\d+)" data-broken="(\d+)"', dom)
    assert check, dom[-2000:]
    assert int(check[1]) == 1 + 1 + 6 and int(check[2]) == 0  # query, attention map, results
    shot = tmp_path / "shot.png"
    _chromium((moved / "results.html").as_uri(), f"--screenshot={shot}", "--window-size=1200,900")
    with Image.open(shot) as img:
        assert img.size == (1200, 900)
        assert np.asarray(img.convert("L")).std() > 20  # not a blank page


def test_page_without_a_torch_model_says_so(world, tmp_path) -> None:
    """Another backend (ONNX Runtime on the exported model) has no PyTorch model to explain."""
    repo = tmp_path / "models"
    _ok(["export", world["model"], "--repo", repo])
    image = next((world["data"] / "images" / "test").iterdir())
    page = tmp_path / "p.html"
    _ok(
        ["search", image, "--attr", "pattern", "--index", world["index"], "--model", repo]
        + ["--top", 2, "--backend", "onnx", "--device", "cpu", "--html", page]
    )
    text = page.read_text()
    assert "No attention map" in text and "attention.png" not in text
    assert sorted(p.name for p in (tmp_path / "p_files").iterdir()) == [
        "asen-manifest.json",  # marks the folder as asen's own (asen/page_files.py)
        "query.jpg",
        "r001.jpg",
        "r002.jpg",
    ]


# ------------------------------------------------------------------ damaged indexes


@pytest.mark.parametrize(
    "damage, words",
    [
        ("manifest", ["manifest.json: damaged index manifest", "rebuild it with `asen index`"]),
        ("manifest keys", ["manifest.json: damaged index manifest (dim"]),
        ("items", ["items.npz: missing from the index"]),
        ("items bytes", ["items.npz: damaged index file"]),
        ("faiss", ["attr_0.faiss: damaged index file", "rebuild it with `asen index`"]),
        ("faiss missing", ["attr_0.faiss: missing from the index"]),
    ],
)
def test_damaged_index_is_one_line(tmp_path, damage, words) -> None:
    split = _random_split(200, 16, 2)
    SearchIndex.build(split, ["a", "b"]).save(tmp_path / "idx")
    idx = tmp_path / "idx"
    if damage == "manifest":
        (idx / "manifest.json").write_text("{bad")
    elif damage == "manifest keys":
        manifest = json.loads((idx / "manifest.json").read_text())
        (idx / "manifest.json").write_text(json.dumps({**manifest, "dim": "16"}))
    elif damage == "items":
        (idx / "items.npz").unlink()
    elif damage == "items bytes":
        (idx / "items.npz").write_bytes((idx / "items.npz").read_bytes()[:50])
    elif damage == "faiss":
        (idx / "attr_0.faiss").write_bytes((idx / "attr_0.faiss").read_bytes()[:100])
    else:
        (idx / "attr_0.faiss").unlink()
    with pytest.raises(AsenError) as e:
        SearchIndex.load(idx).search(split.embeddings[0], 0, k=3)
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_nprobe_below_one_is_one_line(tmp_path) -> None:
    split = _random_split(200, 16, 2)
    index = SearchIndex.build(split, ["a", "b"], ivf=True)
    with pytest.raises(AsenError, match="--nprobe must be at least 1, got 0"):
        index.search(split.embeddings[0], 0, k=3, nprobe=0)
