"""Checkpoints: atomic writes, and one clear error for anything that is not one."""

from __future__ import annotations

import argparse

import pytest
import torch

from asen import AsenError
from asen.checkpoint import (
    FORMAT,
    atomic_save,
    checkpoint_attributes,
    load_checkpoint,
    load_model,
    make_checkpoint,
)
from asen.config import AttributeSpec, load_config
from asen.model.asen import ASENPP

ATTRS = [AttributeSpec("collar", 3), AttributeSpec("sleeve", 5)]


@pytest.fixture(scope="module")
def real_checkpoint():
    cfg = load_config(
        ["small"], ["model.embed_dim=16", "model.global_common=16", "model.attr_dim=8"]
    )
    torch.manual_seed(0)
    model = ASENPP(cfg.model, len(ATTRS), stage=1)
    return make_checkpoint(model, cfg, ATTRS, epoch=2, step=0), model


def assert_one_line_error(path, *words) -> str:
    with pytest.raises(AsenError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


# ------------------------------------------------------------------ round trip


def test_real_checkpoint_round_trips(tmp_path, real_checkpoint):
    ckpt, model = real_checkpoint
    path = tmp_path / "run" / "last.pt"  # the folder is created
    atomic_save(ckpt, path)
    back = load_checkpoint(path)
    assert back["format"] == FORMAT and back["stage"] == 1 and back["epoch"] == 2
    assert checkpoint_attributes(back) == ATTRS
    loaded, _ = load_model(path)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# ------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    assert_one_line_error(tmp_path / "nope.pt", "not found")


def test_directory_is_not_a_checkpoint(tmp_path):
    assert_one_line_error(tmp_path, "not found")


@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_checkpoint(tmp_path, real_checkpoint, keep):
    path = tmp_path / "last.pt"
    atomic_save(real_checkpoint[0], path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert_one_line_error(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert_one_line_error(path)


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"a": 1}, path)
    assert_one_line_error(path, "not an asen checkpoint")


def test_foreign_tensor_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torch.zeros(3), path)
    assert_one_line_error(path, "not an asen checkpoint")


def test_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, this is not a checkpoint\n" * 20)
    assert_one_line_error(path)


def test_pickle_with_arbitrary_object_is_refused(tmp_path):
    """weights_only=True: a pickle that would run code is an error, not executed."""
    path = tmp_path / "other_project.pt"
    torch.save({"format": FORMAT, "args": argparse.Namespace(lr=0.1)}, path)
    msg = assert_one_line_error(path, "not a weights-only checkpoint", "argparse.Namespace")
    assert "weights_only" not in msg  # never suggests loading it another way


# ------------------------------------------------------------------ atomic_save


def test_atomic_save_leaves_no_temp_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"format": FORMAT, "x": torch.ones(2)}, path)
    atomic_save({"format": FORMAT, "x": torch.zeros(2)}, path)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.zeros(2))


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_old_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "last.pt"
    atomic_save({"format": FORMAT, "epoch": 1}, path)
    before = path.read_bytes()

    def failing_save(obj, fh, *args, **kwargs):
        fh.write(b"partial garbage")  # half-written, then the failure
        raise exc

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(type(exc)):
        atomic_save({"format": FORMAT, "epoch": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(obj, fh, *args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        atomic_save({"format": FORMAT}, tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ damaged files


@pytest.mark.parametrize("key", ["config", "attributes", "model", "stage"])
def test_format_tag_with_missing_keys_is_one_line(tmp_path, real_checkpoint, key):
    ckpt = {k: v for k, v in real_checkpoint[0].items() if k != key}
    path = tmp_path / "partial.pt"
    torch.save(ckpt, path)
    assert_one_line_error(path, f"incomplete asen checkpoint (missing {key})")


def test_damaged_attributes_are_one_line(tmp_path, real_checkpoint):
    path = tmp_path / "bad.pt"
    torch.save({**real_checkpoint[0], "attributes": [{"name": "a"}]}, path)
    assert_one_line_error(path, "damaged asen checkpoint (attributes unreadable)")
    torch.save({**real_checkpoint[0], "attributes": [{"name": "a,b", "values": 3}]}, path)
    assert_one_line_error(path, "contain no comma")


def test_weights_that_do_not_fit_the_model_are_one_line(tmp_path, real_checkpoint):
    ckpt = real_checkpoint[0]
    weights = dict(ckpt["model"])
    dropped = sorted(weights)[0]
    del weights[dropped]
    path = tmp_path / "missing.pt"
    torch.save({**ckpt, "model": weights}, path)
    with pytest.raises(AsenError) as e:
        load_model(path)
    assert (
        str(e.value)
        == f"{path}: the weights do not fit the model (missing 1 weights, e.g. {dropped})"
    )
    other = {**ckpt, "attributes": [*ckpt["attributes"], {"name": "extra", "values": 2}]}
    torch.save(other, path)  # one attribute more than its weights were trained for
    with pytest.raises(AsenError, match="the weights do not fit the model") as e:
        load_model(path)
    assert "\n" not in str(e.value)
