"""The backend registry: which engines an Encoder runs on, and opening one by name.

The library knows only its own `torch` backend by code. The others (`onnx`, `trt` from
asen.export, `triton` from asen.client) are found through the `asen.backends` entry points
that pyproject.toml declares, so asen/ never imports the layers above it
(docs/architecture.md, "Backends").
"""

from __future__ import annotations

import functools
import inspect
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from asen import AsenError

if TYPE_CHECKING:
    from asen.encoders import Encoder

GROUP = "asen.backends"
ORDER = ("torch", "onnx", "trt", "triton")  # how lists and --help show them


@functools.cache
def _entry_points() -> dict[str, Any]:
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    return dict(sorted(found.items(), key=lambda kv: (_rank(kv[0]), kv[0])))


def _rank(name: str) -> int:
    return ORDER.index(name) if name in ORDER else len(ORDER)


def backend_names() -> list[str]:
    """The registered backends (torch, onnx, trt, triton when asen is installed)."""
    names = list(_entry_points())
    return names or ["torch"]  # a checkout run without installing still has the library's own


def encoder_class(backend: str) -> type[Encoder]:
    """The Encoder class of `backend` (its module is imported now, not before)."""
    points = _entry_points()
    if backend not in points:
        if backend == "torch":
            from asen.encoders import TorchEncoder

            return TorchEncoder
        raise AsenError(f"unknown backend {backend!r} (known: {', '.join(backend_names())})")
    return points[backend].load()


def backend_options(backend: str) -> tuple[str, ...]:
    """The keyword options the backend's `Encoder.open` accepts."""
    signature = inspect.signature(encoder_class(backend).open)
    return tuple(
        p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    )


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def open_encoder(backend: str, model: str, **options: Any) -> Encoder:
    """The Encoder of `backend` for `model`. Options left unset (None, False, "auto") are
    dropped; a set one the backend cannot honour is one AsenError naming its flag."""
    accepted = backend_options(backend)
    given = {k: v for k, v in options.items() if not (v is None or v is False or v == "auto")}
    for option in given:
        if option not in accepted:
            raise AsenError(
                f"{_flag(option)} does not apply to --backend {backend} "
                f"(its options: {', '.join(_flag(o) for o in accepted)})"
            )
    return encoder_class(backend).open(model, **given)
