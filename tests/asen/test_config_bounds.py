"""Hostile configs: YAML aliases ("billion laughs") and deep nesting in --config, --set and
dataset.yaml, values that would allocate gigabytes, non-finite numbers, a checkpoint config
built from shared references, and `-c small` beside a file or folder named `small`. Each is
one line, at once."""

from __future__ import annotations

import time

import pytest

from asen import AsenError
from asen.config import MAX_YAML_BYTES, config_from_dict, load_config, read_yaml_mapping
from asen.data.splits import open_dataset

LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
train:
  lr: [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""
DEEP = "train:\n  lr: " + "[" * 100_000 + "]" * 100_000 + "\n"


def _one_line_quickly(call, *words: str) -> str:
    began = time.monotonic()
    with pytest.raises(AsenError) as info:
        call()
    message = str(info.value)
    assert time.monotonic() - began < 5, "took too long"
    assert "\n" not in message and len(message) < 400, message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize(
    ("text", "words"),
    [(LAUGHS, "aliases (*name) are not supported"), (DEEP, "nested more than")],
)
def test_bombs_in_a_config_file(tmp_path, text: str, words: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    _one_line_quickly(lambda: load_config([str(path)]), str(path), words, "line ")


@pytest.mark.parametrize(
    "value",
    [
        "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
        "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], [*c, *c, *c, *c, *c, *c, *c, *c, *c]]",
        "[" * 50_000 + "]" * 50_000,
    ],
)
def test_bombs_in_set(value: str) -> None:
    _one_line_quickly(lambda: load_config(["small"], [f"train.lr={value}"]), "train.lr")


@pytest.mark.parametrize(
    ("text", "words"),
    [(LAUGHS, "aliases (*name) are not supported"), (DEEP, "nested more than")],
)
def test_bombs_in_dataset_yaml(tmp_path, text: str, words: str) -> None:
    (tmp_path / "dataset.yaml").write_text(text)
    _one_line_quickly(lambda: open_dataset(tmp_path), "dataset.yaml", words)


def test_an_oversized_yaml_file_is_refused_unread(tmp_path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    _one_line_quickly(lambda: read_yaml_mapping(path), str(path), "larger than")


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("model.embed_dim=1000000000", "model.embed_dim must be at most 8192"),
        ("model.image_size=60000", "model.image_size must be at most 1024"),
        ("model.local_size=60000", "model.local_size must be at most 1024"),
        ("train.lr=.inf", "train.lr must be a finite number"),
        ("train.margin=-.inf", "train.margin must be a finite number"),
        ("train.lr=.nan", "train.lr must be greater than 0"),
    ],
)
def test_values_that_would_allocate_or_diverge_are_refused(override: str, words: str) -> None:
    _one_line_quickly(lambda: load_config(["small"], [override]), words)


def test_attribute_values_are_bounded(tmp_path) -> None:
    (tmp_path / "dataset.yaml").write_text(
        "attributes: [{name: a, values: 2000000000}, {name: b, values: 3}]\n"
    )
    _one_line_quickly(lambda: open_dataset(tmp_path), "'a' has 2000000000 values, at most")
    (tmp_path / "dataset.yaml").write_text("attributes: [{name: a, values: .inf}]\n")
    _one_line_quickly(lambda: open_dataset(tmp_path), "expected 'attributes:")


def test_a_shared_reference_checkpoint_config_is_one_line() -> None:
    lr: list = []
    for _ in range(80):  # 2**80 leaves when expanded
        lr = [lr, lr]
    _one_line_quickly(lambda: config_from_dict({"train": {"lr": lr}}), "checkpoint config")
    wide = [list(range(10))] * 10_000_000  # 10 M references to one list: also too large
    _one_line_quickly(lambda: config_from_dict({"train": {"lr": wide}}), "too large")


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_packaged_name_beside_a_file_or_folder_of_that_name(tmp_path, monkeypatch, kind) -> None:
    monkeypatch.chdir(tmp_path)
    if kind == "file":
        (tmp_path / "small").write_text("model: {embed_dim: 7}\n")
    else:
        (tmp_path / "small").mkdir()
    assert load_config(["small"]).model.embed_dim == 128  # the packaged one
    if kind == "file":
        assert load_config(["./small"]).model.embed_dim == 7  # a path, as written
    else:
        _one_line_quickly(lambda: load_config(["./small"]), "./small: is a folder")


def test_a_bare_name_that_is_no_packaged_config_points_to_the_local_file(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_text("model: {embed_dim: 7}\n")
    _one_line_quickly(lambda: load_config(["mine"]), "no such packaged config", "./mine")
    assert load_config(["./mine"]).model.embed_dim == 7
