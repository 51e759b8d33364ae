"""`--weights FILE`: a local state dict of the chosen backbone loads; anything else is one
line naming the file."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision

from asen import AsenError
from asen.checkpoint import FORMAT
from asen.model.backbones import create_backbone


def _error(name: str, path) -> str:
    with pytest.raises(AsenError) as e:
        create_backbone(name, str(path))
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize("name", ["resnet_tiny", "resnet18"])
def test_a_state_dict_of_the_backbone_loads(tmp_path, name):
    if name == "resnet_tiny":
        state = create_backbone(name)[0].state_dict()
    else:
        state = torchvision.models.resnet18(weights=None).state_dict()  # full net, fc too
    path = tmp_path / "w.pt"
    torch.save(state, path)
    net, _ = create_backbone(name, str(path))
    assert torch.equal(next(iter(net.parameters())), next(iter(state.values())))


@pytest.mark.parametrize("name", ["resnet_tiny", "resnet18"])
def test_a_state_dict_of_something_else_is_one_line(tmp_path, name):
    path = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(3)}, path)
    assert f"not {name} weights (missing" in _error(name, path)
    other = "resnet18" if name == "resnet_tiny" else "resnet_tiny"
    torch.save(create_backbone(other)[0].state_dict(), path)
    assert f"not {name} weights" in _error(name, path)


@pytest.mark.parametrize("name", ["resnet_tiny", "resnet18"])
def test_files_that_are_not_state_dicts_are_one_line(tmp_path, name):
    path = tmp_path / "w.pt"
    torch.save([torch.zeros(2)], path)
    assert "not a state dict" in _error(name, path)
    torch.save({"format": FORMAT, "model": {}}, path)
    assert "an asen checkpoint, not" in _error(name, path) and "--init" in _error(name, path)
    path.write_bytes(b"garbage")
    assert "not a readable weights file" in _error(name, path)
    assert "weights file not found" in _error(name, tmp_path / "missing.pt")


def test_a_crafted_pickle_is_refused_as_not_weights_only(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"conv.weight": torch.zeros(1), "run": os.getcwd}, path)
    message = _error("resnet_tiny", path)
    assert "not a weights-only weights file" in message and "weights_only" not in message
