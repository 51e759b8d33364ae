"""Backbone registry: ResNets truncated after layer3, as the reference uses them.

`create_backbone(name, weights)` returns the feature extractor and its channel count.
Weights are explicit: None (random init), "imagenet" (torchvision download), or a path
to a local state-dict file. Nothing is downloaded unless asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from asen import AsenError
from asen.weights_file import load_weights_only

_TORCHVISION = {
    "resnet18": (torchvision.models.resnet18, "ResNet18_Weights", 256),
    "resnet34": (torchvision.models.resnet34, "ResNet34_Weights", 256),
    "resnet50": (torchvision.models.resnet50, "ResNet50_Weights", 1024),
}


def _truncate(net: nn.Module) -> nn.Sequential:
    """conv1 .. layer3 of a torchvision ResNet (stride 16)."""
    return nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3
    )


def _torchvision_resnet(name: str) -> Callable[[str | None], tuple[nn.Module, int]]:
    build, weights_enum, channels = _TORCHVISION[name]

    def create(weights: str | None) -> tuple[nn.Module, int]:
        if weights == "imagenet":
            enum = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
            try:
                net = build(weights=enum)
            except Exception as e:  # noqa: BLE001 - any download failure is one line
                raise AsenError(
                    f"cannot download ImageNet weights for {name} ({type(e).__name__}); "
                    "pass a local state-dict file with --weights, or train from random init"
                ) from e
            return _truncate(net), channels
        net = build(weights=None)
        if weights:
            _load_state(net, Path(weights), name, ("layer4.", "fc."))
        return _truncate(net), channels

    return create


def _load_state(net: nn.Module, path: Path, name: str, unused: tuple[str, ...] = ()) -> None:
    """A local state dict of `name` into `net`; keys starting with `unused` may be missing
    (the layers the truncation drops). Anything else that does not fit is one line."""
    state = load_weights_only(path, "weights file")
    if isinstance(state, dict) and str(state.get("format", "")).startswith("asen-checkpoint"):
        raise AsenError(f"{path}: an asen checkpoint, not {name} weights (use --init for it)")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise AsenError(f"{path}: not a state dict (names -> tensors) of {name} parameters")
    try:
        missing, _ = net.load_state_dict(state, strict=False)
    except RuntimeError:
        raise AsenError(f"{path}: not {name} weights (parameter shapes differ)") from None
    needed = [k for k in missing if not k.startswith(unused)] if unused else missing
    if needed:
        raise AsenError(
            f"{path}: not {name} weights (missing {len(needed)} keys, e.g. {needed[0]})"
        )


def _tiny(weights: str | None) -> tuple[nn.Module, int]:
    """A ResNet-shaped backbone for 2-core CPUs: BasicBlocks at 32/64/128 channels, stride 8."""

    def stage(cin: int, cout: int, stride: int) -> nn.Module:
        down = None
        if stride != 1 or cin != cout:
            down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        return BasicBlock(cin, cout, stride, down)

    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        stage(32, 32, 1),
        stage(32, 64, 2),
        stage(64, 128, 2),
    )
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if weights == "imagenet":
        raise AsenError("resnet_tiny has no ImageNet weights; use resnet18/34/50")
    if weights:
        _load_state(net, Path(weights), "resnet_tiny")
    return net, 128


BACKBONES: dict[str, Callable[[str | None], tuple[nn.Module, int]]] = {
    **{name: _torchvision_resnet(name) for name in _TORCHVISION},
    "resnet_tiny": _tiny,
}


def create_backbone(name: str, weights: str | None = None) -> tuple[nn.Module, int]:
    """The feature extractor registered as `name` and its output channel count."""
    if name not in BACKBONES:
        raise AsenError(f"unknown backbone '{name}'; valid: {', '.join(BACKBONES)}")
    return BACKBONES[name](weights)
