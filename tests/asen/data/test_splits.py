"""The split-format reader validates as it reads: every error names the file and line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from PIL import Image

from asen import AsenError
from asen.config import AttributeSpec
from asen.data.splits import SplitError, open_dataset

ATTRS = [AttributeSpec("collar", 3), AttributeSpec("sleeve", 4)]


def make_root(
    tmp_path,
    n=(4, 3, 3),
    labels="0 0 1 1 2\n1 0 0\n2 1 3\n3 0 2 1 0\n",
    query="0 0 1\n1 1 2\n",
    candidate="1 0 1\n2 0 0\n2 1 3\n",
    meta=True,
):
    """A dataset root with tiny PNGs: n = images in (train, valid, test)."""
    root = tmp_path / "root"
    for split, count in zip(("train", "valid", "test"), n, strict=True):
        (root / "img" / split).mkdir(parents=True)
        names = []
        for i in range(count):
            name = f"img/{split}/{i}.png"
            Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(root / name)
            names.append(name)
        (root / f"filenames_{split}.txt").write_text("\n".join(names) + "\n")
    (root / "label_train.txt").write_text(labels)
    for split in ("valid", "test"):
        (root / f"query_{split}.txt").write_text(query)
        (root / f"candidate_{split}.txt").write_text(candidate)
    if meta:
        attrs = [{"name": a.name, "values": a.values} for a in ATTRS]
        (root / "dataset.yaml").write_text(yaml.safe_dump({"attributes": attrs}))
    return root


def error_of(fn) -> str:
    with pytest.raises(SplitError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def assert_names(msg: str, path, lineno: int | None) -> None:
    where = f"{path}:{lineno}" if lineno is not None else str(path)
    assert where in msg, msg
    if lineno is None:
        assert not re.search(re.escape(str(path)) + r":\d", msg), msg


# ------------------------------------------------------------------ a valid root


def test_valid_root_reads(tmp_path):
    root = make_root(tmp_path)
    ds = open_dataset(root)
    assert ds.names == ["collar", "sleeve"] and ds.counts == [3, 4]
    labels = ds.train_labels()
    expected = np.array([[1, 2], [0, -1], [-1, 3], [2, 0]])
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int64
    entries = ds.eval_entries("valid")
    np.testing.assert_array_equal(entries.queries, [[0, 0, 1], [1, 1, 2]])
    np.testing.assert_array_equal(entries.candidates, [[1, 0, 1], [2, 0, 0], [2, 1, 3]])
    assert [p.name for p in entries.files] == ["0.png", "1.png", "2.png"]
    assert all(p.is_file() for p in ds.files("train"))


def test_blank_lines_are_skipped_but_line_numbers_count_them(tmp_path):
    root = make_root(tmp_path, labels="0 0 1\n\n   \n1 0 7\n")
    ds = open_dataset(root)
    msg = error_of(ds.train_labels)
    assert_names(msg, root / "label_train.txt", 4)


def test_train_labels_minus_one_for_unlabelled(tmp_path):
    root = make_root(tmp_path, n=(5, 3, 3), labels="0 1 3\n2 0 2\n")
    labels = open_dataset(root).train_labels()
    assert labels.shape == (5, 2)
    assert labels[0].tolist() == [-1, 3]
    assert labels[2].tolist() == [2, -1]
    assert (labels[[1, 3, 4]] == -1).all()


# ------------------------------------------------------------------ line errors


@pytest.mark.parametrize(
    "labels, lineno, words",
    [
        ("0 0 1\n1 x 1\n", 2, ["not an integer", "x"]),
        ("0 0 1.5\n", 1, ["not an integer"]),
        ("0 0 1\n1 0 1\n2 2 0\n", 3, ["attribute 2", "out of range"]),
        ("0 -1 0\n", 1, ["attribute -1", "out of range"]),
        ("0 0 3\n", 1, ["value 3", "collar", "out of range"]),
        ("0 1 -1\n", 1, ["value -1", "sleeve"]),
        ("0 0 0\n4 0 0\n", 2, ["image id 4", "out of range"]),
        ("-1 0 0\n", 1, ["image id -1"]),
        ("0 0\n", 1, ["expected"]),
        ("0 0 1 1\n", 1, ["expected"]),
        ("0\n", 1, ["expected"]),
    ],
)
def test_label_line_errors(tmp_path, labels, lineno, words):
    root = make_root(tmp_path, labels=labels)
    msg = error_of(open_dataset(root).train_labels)
    assert_names(msg, root / "label_train.txt", lineno)
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("kind", ["query", "candidate"])
@pytest.mark.parametrize(
    "line, words",
    [
        ("0 0 one", ["not an integer"]),
        ("0 5 0", ["attribute 5", "out of range"]),
        ("0 1 4", ["value 4", "sleeve", "out of range"]),
        ("3 0 0", ["image id 3", "out of range"]),  # valid has 3 images: ids 0..2
        ("0 0 1 1", ["expected"]),
        ("0 0", ["expected"]),
    ],
)
def test_eval_line_errors(tmp_path, kind, line, words):
    good = "0 0 1\n1 1 2\n"
    root = make_root(tmp_path, **{kind: good + line + "\n"})
    msg = error_of(lambda: open_dataset(root).eval_entries("test"))
    assert_names(msg, root / f"{kind}_test.txt", 3)
    for w in words:
        assert w in msg, msg


def test_image_id_range_is_per_split(tmp_path):
    # id 3 exists in train (4 images) but not in valid (3 images)
    root = make_root(tmp_path, n=(4, 3, 5), query="3 0 0\n")
    ds = open_dataset(root)
    ds.eval_entries("test")  # test has 5 images: fine
    msg = error_of(lambda: ds.eval_entries("valid"))
    assert_names(msg, root / "query_valid.txt", 1)


# ------------------------------------------------------------------ file errors


def test_empty_label_file(tmp_path):
    root = make_root(tmp_path, labels="\n\n")
    msg = error_of(open_dataset(root).train_labels)
    assert "empty" in msg
    assert_names(msg, root / "label_train.txt", None)


@pytest.mark.parametrize("kind", ["query", "candidate"])
def test_empty_eval_file(tmp_path, kind):
    root = make_root(tmp_path, **{kind: ""})
    msg = error_of(lambda: open_dataset(root).eval_entries("valid"))
    assert "empty" in msg
    assert_names(msg, root / f"{kind}_valid.txt", None)


def test_empty_filenames_file(tmp_path):
    root = make_root(tmp_path)
    (root / "filenames_valid.txt").write_text("\n")
    msg = error_of(lambda: open_dataset(root).files("valid"))
    assert "empty" in msg
    assert_names(msg, root / "filenames_valid.txt", None)


@pytest.mark.parametrize(
    "name, call",
    [
        ("label_train.txt", lambda ds: ds.train_labels()),
        ("filenames_train.txt", lambda ds: ds.train_labels()),
        ("filenames_test.txt", lambda ds: ds.eval_entries("test")),
        ("query_test.txt", lambda ds: ds.eval_entries("test")),
        ("candidate_valid.txt", lambda ds: ds.eval_entries("valid")),
    ],
)
def test_missing_split_file(tmp_path, name, call):
    root = make_root(tmp_path)
    (root / name).unlink()
    msg = error_of(lambda: call(open_dataset(root)))
    assert "not found" in msg
    assert str(root / name) in msg


def test_missing_image_files_count_and_first_few(tmp_path):
    root = make_root(tmp_path, n=(8, 3, 3))
    missing = [f"img/train/{i}.png" for i in (1, 2, 4, 5, 7)]
    for name in missing:
        (root / name).unlink()
    msg = error_of(lambda: open_dataset(root).files("train"))
    assert str(root / "filenames_train.txt") in msg
    assert re.search(r"\b5\b", msg), msg
    shown = [m for m in missing if str(root / m) in msg]
    assert shown[:3] == missing[:3]  # the first few, in file order
    assert str(root / "img/train/0.png") not in msg  # present files are not listed
    assert len(msg) < 1000  # a few, not all


def test_unknown_eval_split(tmp_path):
    root = make_root(tmp_path)
    with pytest.raises(AsenError, match="train"):
        open_dataset(root).eval_entries("train")


def test_missing_root(tmp_path):
    with pytest.raises(AsenError) as e:
        open_dataset(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"attributes: [{name: a}]\n", "expected 'attributes: [{name, values}, ...]'"),
        (b"other: 1\n", "expected 'attributes: [{name, values}, ...]'"),
        (b"attributes: [{name: a, values: 3\n", "invalid YAML"),
        (b"- attributes\n", "expected a mapping"),
        (b"attributes: \xff\n", "not a UTF-8 text file"),
    ],
)
def test_bad_dataset_yaml_is_one_line_naming_it(tmp_path, content, words):
    root = make_root(tmp_path)
    (root / "dataset.yaml").write_bytes(content)
    with pytest.raises(AsenError) as e:
        open_dataset(root)
    msg = str(e.value)
    assert msg.startswith(f"{root / 'dataset.yaml'}: ") and words in msg and "\n" not in msg


# ------------------------------------------------------------------ attribute resolution


def test_config_attributes_win_over_dataset_yaml(tmp_path):
    root = make_root(tmp_path)
    given = [AttributeSpec("a", 5), AttributeSpec("b", 6), AttributeSpec("c", 2)]
    ds = open_dataset(root, given)
    assert ds.names == ["a", "b", "c"] and ds.counts == [5, 6, 2]


def test_dataset_yaml_wins_over_inference(tmp_path):
    root = make_root(tmp_path)
    (root / "dataset.yaml").write_text(
        yaml.safe_dump({"attributes": [{"name": "x", "values": 9}, {"name": "y", "values": 8}]})
    )
    ds = open_dataset(root)
    assert ds.names == ["x", "y"] and ds.counts == [9, 8]
    assert open_dataset(root, []).names == ["x", "y"]  # an empty config list means "not given"


def test_inferred_from_labels_when_nothing_else(tmp_path):
    # attribute 0 reaches value 2 (train), attribute 1 value 3 (candidate), attribute 2 value 4
    root = make_root(
        tmp_path,
        labels="0 0 1 1 1\n1 0 2\n",
        query="0 2 4\n",
        candidate="1 1 3\n",
        meta=False,
    )
    ds = open_dataset(root)
    assert ds.names == ["attr0", "attr1", "attr2"]
    assert ds.counts == [3, 4, 5]
    labels = ds.train_labels()
    assert labels[1].tolist() == [2, -1, -1]


def test_attribute_index(tmp_path):
    ds = open_dataset(make_root(tmp_path))
    assert ds.attribute_index("collar") == 0
    assert ds.attribute_index("sleeve") == 1
    assert ds.attribute_index("1") == 1
    with pytest.raises(AsenError) as e:
        ds.attribute_index("hem")
    msg = str(e.value)
    assert "hem" in msg and "collar" in msg and "sleeve" in msg
    with pytest.raises(AsenError):
        ds.attribute_index("2")  # only two attributes


# ------------------------------------------------------------------ hostile inputs


def test_non_utf8_byte_names_file_and_line(tmp_path):
    root = make_root(tmp_path)
    (root / "query_test.txt").write_bytes(b"0 0 1\n1 1 \xff2\n")
    msg = error_of(lambda: open_dataset(root).eval_entries("test"))
    assert f"{root / 'query_test.txt'}:2: not UTF-8 text (byte 0xff at column 5)" in msg
    (root / "filenames_test.txt").write_bytes(b"img/test/0.png\nimg/\xfe.png\n")
    msg = error_of(lambda: open_dataset(root).files("test"))
    assert f"{root / 'filenames_test.txt'}:2: not UTF-8" in msg


@pytest.mark.parametrize("name", ["ABS", "../outside.png", "img/../../outside.png"])
def test_image_paths_leaving_the_root_are_refused_unless_allowed(tmp_path, name):
    root = make_root(tmp_path)
    outside = tmp_path / "outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    name = str(outside) if name == "ABS" else name
    (root / "filenames_test.txt").write_text(f"img/test/0.png\n{name}\nimg/test/2.png\n")
    msg = error_of(lambda: open_dataset(root).files("test"))
    assert f"{root / 'filenames_test.txt'}:2: image path {name!r} leaves the dataset root" in msg
    assert "allow_paths_outside_root: true" in msg
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    (root / "dataset.yaml").write_text(yaml.safe_dump({**meta, "allow_paths_outside_root": True}))
    files = open_dataset(root).files("test")
    assert files[1].resolve() == outside.resolve()


def test_paths_inside_the_root_with_dots_are_fine(tmp_path):
    root = make_root(tmp_path)
    (root / "filenames_test.txt").write_text(
        "img/test/0.png\nimg/../img/test/1.png\n./img/test/2.png\n"
    )
    assert len(open_dataset(root).files("test")) == 3


def test_attribute_count_of_the_model_differs_from_the_dataset(tmp_path):
    root = make_root(tmp_path, query="0 0 1\n1 1 2\n", candidate="1 0 1\n2 1 3\n")
    one = [AttributeSpec("collar", 3)]
    msg = error_of(lambda: open_dataset(root, one).eval_entries("test"))
    assert "attribute 1 out of range (0..0: 1 attributes from the model or config)" in msg
    assert "the model or config has 1 attributes [collar (3)]" in msg
    assert "dataset.yaml has 2 attributes [collar (3), sleeve (4)]" in msg


@pytest.mark.parametrize(
    "attrs, word",
    [
        ([{"name": "pat,tern", "values": 3}], "contain no comma"),
        ([{"name": "a", "values": 3}, {"name": "a", "values": 2}], "appears twice"),
        ([{"name": "a", "values": 1}], "at least 2 values"),
    ],
)
def test_dataset_yaml_attribute_names_are_checked(tmp_path, attrs, word):
    root = make_root(tmp_path)
    (root / "dataset.yaml").write_text(yaml.safe_dump({"attributes": attrs}))
    with pytest.raises(AsenError, match=word) as e:
        open_dataset(root)
    assert str(root / "dataset.yaml") in str(e.value) and "\n" not in str(e.value)
