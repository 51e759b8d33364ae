"""Reading a file of tensors with `torch.load(weights_only=True)`, every failure one line.

A file that needs more than tensors and plain data (a crafted pickle that would run code)
is refused as such; asen never loads it another way."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from asen import AsenError

_GLOBAL = re.compile(r"GLOBAL (\S+)")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_weights_only(path: str | Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; `what` names the file in errors
    ("checkpoint", "weights file")."""
    path = Path(path)
    if not path.is_file():
        raise AsenError(f"{path}: {what} not found")
    try:
        with warnings.catch_warnings():  # a foreign file's pickle protocol: the error says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        if found is None:  # bytes that are no pickle at all (torch's text would suggest
            # loading without weights_only, which asen never does)
            raise AsenError(
                f"{path}: not a readable {what} (truncated, corrupt or not a PyTorch file)"
            ) from None
        raise AsenError(
            f"{path}: not a weights-only {what}: it holds Python objects ({found.group(1)}) "
            "that asen never loads"
        ) from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise AsenError(
            f"{path}: not a readable {what} (truncated or corrupt: {first_line(e)})"
        ) from None
