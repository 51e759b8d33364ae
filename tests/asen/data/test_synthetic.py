from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from asen import AsenError
from asen.data import synthetic

SMALL = {"n_train": 40, "n_eval": 20, "image_size": 64}
TEXT_FILES = [
    "filenames_train.txt",
    "filenames_valid.txt",
    "filenames_test.txt",
    "label_train.txt",
    "query_valid.txt",
    "candidate_valid.txt",
    "query_test.txt",
    "candidate_test.txt",
    "dataset.yaml",
]


def rows(path: Path) -> list[list[int]]:
    return [[int(t) for t in line.split()] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("syn")
    return out, synthetic.generate(out, seed=3, **SMALL)


def test_files_and_line_counts(default_set: tuple[Path, dict]) -> None:
    out, meta = default_set
    assert meta == yaml.safe_load((out / "dataset.yaml").read_text())
    assert meta["name"] == "synthetic" and meta["seed"] == 3
    counts = [a["values"] for a in meta["attributes"]]
    assert counts == list(synthetic.DEFAULT_ATTRIBUTES.values())
    for split, n in [("train", 40), ("valid", 20), ("test", 20)]:
        names = (out / f"filenames_{split}.txt").read_text().splitlines()
        assert names == [f"images/{split}/{i:06d}.png" for i in range(n)]
        with Image.open(out / names[-1]) as img:
            assert img.mode == "RGB" and img.format == "PNG"
            assert 64 <= min(img.size) and max(img.size) <= 80
    labels = rows(out / "label_train.txt")
    assert [r[0] for r in labels] == list(range(40))
    for r in labels:
        assert r[1::2] == list(range(len(counts)))
        assert all(0 <= v < n for v, n in zip(r[2::2], counts, strict=True))
    for split in ("valid", "test"):
        assert len(rows(out / f"query_{split}.txt")) == 4 * len(counts)
        assert len(rows(out / f"candidate_{split}.txt")) == 16 * len(counts)
    assert not list(out.rglob("*.tmp"))


def test_query_and_candidate_entries_in_range(default_set: tuple[Path, dict]) -> None:
    out, meta = default_set
    counts = [a["values"] for a in meta["attributes"]]
    for split in ("valid", "test"):
        query, cand = rows(out / f"query_{split}.txt"), rows(out / f"candidate_{split}.txt")
        for image_id, attr, value in query + cand:
            assert 0 <= image_id < 20 and 0 <= attr < len(counts) and 0 <= value < counts[attr]
        assert {r[0] for r in query}.isdisjoint(r[0] for r in cand)
        assert {r[0] for r in query} | {r[0] for r in cand} == set(range(20))


def test_deterministic_per_seed(tmp_path: Path, default_set: tuple[Path, dict]) -> None:
    out, _ = default_set
    again = tmp_path / "again"
    synthetic.generate(again, seed=3, **SMALL)
    for name in TEXT_FILES + ["images/train/000000.png", "images/test/000019.png"]:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    synthetic.generate(other, seed=4, **SMALL)
    for name in ["images/train/000000.png", "images/valid/000007.png"]:
        assert (out / name).read_bytes() != (other / name).read_bytes()
    assert (out / "label_train.txt").read_text() != (other / "label_train.txt").read_text()


def test_custom_attributes(tmp_path: Path) -> None:
    attributes = {"a": 2, "b": 3, "c": 4, "d": 5, "e": 6, "f": 7}
    meta = synthetic.generate(tmp_path, seed=1, attributes=attributes, **SMALL)
    assert [(a["name"], a["values"]) for a in meta["attributes"]] == list(attributes.items())
    labels = np.array(rows(tmp_path / "label_train.txt"))[:, 2::2]
    for column, n in zip(labels.T, attributes.values(), strict=True):
        assert column.max() < n and len(set(column)) >= min(n, 3)


@pytest.mark.parametrize("counts", [[5, 4, 4, 5], [10] * 8, [2, 3, 4, 5, 6, 7, 8]])
def test_each_attribute_changes_only_its_region(counts: list[int]) -> None:
    for seed in range(3):
        base = [(seed + a) % n for a, n in enumerate(counts)]
        masks = synthetic.region_masks(counts, seed, 64)
        ref = np.asarray(synthetic.render(base, counts, seed, 64), np.int16)
        assert ref.shape[:2] == masks.shape[1:]
        for a, n in enumerate(counts):
            for v in range(n):
                if v == base[a]:
                    continue
                vals = list(base)
                vals[a] = v
                img = np.asarray(synthetic.render(vals, counts, seed, 64), np.int16)
                changed = np.abs(img - ref).max(axis=2) > 24
                assert changed.sum() >= 2, (a, v)
                inside = (changed & masks[a]).sum() / changed.sum()
                assert inside >= 0.95, (a, v, inside)


def test_nuisance_varies_with_seed() -> None:
    counts = [5, 4, 4, 5]
    imgs = [synthetic.render([0, 1, 2, 3], counts, s, 64) for s in range(6)]
    assert len({img.size for img in imgs}) > 1
    assert len({img.getpixel((0, 0)) for img in imgs}) > 1


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"n_train": 9}, "n_train"),
        ({"n_eval": 4}, "n_eval"),
        ({"attributes": {"a": 3, "b": 1}}, "'b'"),
        ({"attributes": {"a": 11}}, "'a'"),
        ({"attributes": {}}, "attributes"),
        ({"attributes": {str(i): 3 for i in range(9)}}, "attributes"),
        ({"image_size": 8}, "image_size"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, word: str) -> None:
    with pytest.raises(AsenError, match=word) as info:
        synthetic.generate(tmp_path / "x", **{**SMALL, **kwargs})
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_negative_seed_and_out_that_is_a_file(tmp_path: Path) -> None:
    with pytest.raises(AsenError, match="seed must be a non-negative integer, got -1"):
        synthetic.generate(tmp_path / "x", **{**SMALL, "seed": -1})
    assert not (tmp_path / "x").exists()
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    with pytest.raises(AsenError, match="exists and is not a folder"):
        synthetic.generate(afile, **SMALL)
    assert afile.read_text() == "mine\n"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "images").write_text("mine\n")  # a file where a folder must go
    with pytest.raises(AsenError, match="cannot write") as info:
        synthetic.generate(tmp_path / "d", **SMALL)
    assert "\n" not in str(info.value)
