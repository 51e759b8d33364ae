"""Crafted index folders (offsets out of range, non-string attribute names, deep or huge
manifests) and attribute numbers that are not ASCII digits: one line each, naming the file,
never an IndexError, TypeError or RecursionError."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asen import AsenError
from asen.evaluate import EmbeddedSplit
from asen.search import SearchIndex, attribute_id


def _split(n: int = 120, dim: int = 8) -> EmbeddedSplit:
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return EmbeddedSplit(
        embeddings=emb,
        image_ids=np.arange(n, dtype=np.int64),
        attributes=np.arange(n) % 2,
        values=rng.integers(0, 3, n),
        is_query=np.zeros(n, bool),
        paths=[f"img/{i}.png" for i in range(n)],
    )


@pytest.fixture
def index_dir(tmp_path):
    split = _split()
    SearchIndex.build(split, ["a", "b"]).save(tmp_path / "idx")
    return tmp_path / "idx", split


def _items(folder, **changes) -> None:
    with np.load(folder / "items.npz") as npz:
        items = {k: npz[k] for k in npz.files}
    items.update(changes)
    np.savez(folder / "items.npz", **items)


def _manifest(folder, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **changes}))


@pytest.mark.parametrize(
    ("craft", "words"),
    [
        (lambda f: _items(f, offsets=np.array([0, 60, 10_000])), "items.npz: damaged index file"),
        (lambda f: _items(f, offsets=np.array([0, -5, 120])), "items.npz: damaged index file"),
        (lambda f: _items(f, offsets=np.array([0, 70, 120])), "differ from the manifest"),
        (lambda f: _items(f, offsets=np.array([0.0, 60.5, 120.0])), "(offsets)"),
        (lambda f: _items(f, paths=np.array(["x"])), "arrays of different lengths"),
        (lambda f: _items(f, values=np.zeros((120, 2))), "not one-dimensional"),
        (lambda f: _manifest(f, attribute_names=[1, ["b"]]), "(attribute_names missing or wrong"),
        (lambda f: _manifest(f, counts=[60, "60"]), "(counts missing or wrong"),
        (lambda f: _manifest(f, dim=-8), "(dim missing or wrong"),
        (lambda f: _manifest(f, format=["x"] * 5000), "index format ['x', 'x', "),
        (lambda f: _manifest(f, source=["x"] * 200_000), "too large (more than"),
        (
            lambda f: (f / "manifest.json").write_text("[" * 100_000 + "]" * 100_000),
            "manifest.json: damaged index manifest",
        ),
        (
            lambda f: _manifest(f, source=json.loads("[" * 500 + "]" * 500)),
            "nested more than",
        ),
    ],
)
def test_crafted_index_is_one_line(index_dir, craft, words: str) -> None:
    folder, split = index_dir
    craft(folder)
    with pytest.raises(AsenError) as info:
        SearchIndex.load(folder).search(split.embeddings[0], 1, k=5)
    message = str(info.value)
    assert words in message and "\n" not in message and len(message) < 400, message


def test_the_index_still_loads_and_searches(index_dir) -> None:
    folder, split = index_dir
    hits = SearchIndex.load(folder).search(split.embeddings[1], 1, k=5)
    assert hits[0].image_id == 1 and len(hits) == 5


@pytest.mark.parametrize("name", ["²", "³", "1²", "٣", "9" * 5000])
def test_attribute_numbers_are_ascii_digits(name: str) -> None:
    assert attribute_id("1", ["a", "b"]) == 1 and attribute_id("b", ["a", "b"]) == 1
    with pytest.raises(AsenError, match="unknown attribute") as info:
        attribute_id(name, ["a", "b"])
    assert len(str(info.value)) < 300
