"""Checkpoints: written atomically, read with `weights_only=True`, carrying their config
and attribute names so that nothing else is needed to use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import asen
from asen import AsenError
from asen.atomic import atomic_write
from asen.config import (
    AttributeSpec,
    Config,
    attributes_from_dicts,
    check_attributes,
    config_from_dict,
)
from asen.model.asen import ASENPP
from asen.weights_file import load_weights_only

FORMAT = "asen-checkpoint/1"
REQUIRED = {"stage": int, "config": dict, "attributes": list, "model": dict}


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
    ckpt = load_weights_only(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AsenError(f"{path}: not an asen checkpoint (no '{FORMAT}' format tag)")
    _check_structure(ckpt, path)
    return ckpt


def _check_structure(ckpt: dict, path: Path) -> None:
    """The keys every asen checkpoint has, of the right kinds, and readable attributes."""
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise AsenError(f"{path}: incomplete asen checkpoint (missing {', '.join(missing)})")
    wrong = [k for k, kind in REQUIRED.items() if not isinstance(ckpt[k], kind)]
    if wrong:
        raise AsenError(f"{path}: damaged asen checkpoint ({', '.join(wrong)} of the wrong type)")
    if ckpt["stage"] not in (1, 2):
        raise AsenError(f"{path}: damaged asen checkpoint (stage {ckpt['stage']})")
    try:
        check_attributes(attributes_from_dicts(ckpt["attributes"]), str(path))
    except (KeyError, TypeError, ValueError):
        raise AsenError(f"{path}: damaged asen checkpoint (attributes unreadable)") from None


def restore_model(model: ASENPP, ckpt: dict, path: str | Path) -> None:
    """Load a checkpoint's weights into `model`; keys or shapes that differ are one line."""
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as e:
        detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise AsenError(f"{path}: the weights do not fit the model ({detail})") from None
    if missing or unexpected:
        what = f"missing {len(missing)} weights" if missing else f"{len(unexpected)} unknown"
        raise AsenError(
            f"{path}: the weights do not fit the model ({what}, e.g. {(missing or unexpected)[0]})"
        )


def checkpoint_attributes(ckpt: dict) -> list[AttributeSpec]:
    return attributes_from_dicts(ckpt["attributes"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ASENPP, dict]:
    """The model of a checkpoint, in eval mode on `device`, and the checkpoint itself."""
    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_dict(ckpt["config"])
    except AsenError as e:
        raise AsenError(f"{path}: damaged asen checkpoint ({e})") from None
    cfg.model.weights = None  # the checkpoint holds the weights
    model = ASENPP(cfg.model, len(ckpt["attributes"]), ckpt["stage"])
    restore_model(model, ckpt, path)
    return model.to(device).eval(), ckpt
