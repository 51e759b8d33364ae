"""Checkpoints: written atomically, read with `weights_only=True`, carrying their config
and attribute names so that nothing else is needed to use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import asen
from asen import AsenError
from asen.atomic import atomic_write
from asen.config import AttributeSpec, Config, attributes_from_dicts, config_from_dict
from asen.model.asen import ASENPP

FORMAT = "asen-checkpoint/1"


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` through `asen.atomic`: a failed write leaves the previous file."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def make_checkpoint(
    model: ASENPP, cfg: Config, attributes: list[AttributeSpec], **state: Any
) -> dict:
    return {
        "format": FORMAT,
        "asen_version": asen.__version__,
        "stage": model.stage,
        "config": cfg.to_dict(),
        "attributes": [a.to_dict() for a in attributes],
        "model": model.state_dict(),
        **state,
    }


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint; a missing, truncated or foreign file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise AsenError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AsenError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {reason})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AsenError(f"{path}: not an asen checkpoint (no '{FORMAT}' format tag)")
    return ckpt


def checkpoint_attributes(ckpt: dict) -> list[AttributeSpec]:
    return attributes_from_dicts(ckpt["attributes"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ASENPP, dict]:
    """The model of a checkpoint, in eval mode on `device`, and the checkpoint itself."""
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    cfg.model.weights = None  # the checkpoint holds the weights
    model = ASENPP(cfg.model, len(ckpt["attributes"]), ckpt["stage"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
