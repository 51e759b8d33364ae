"""The one preprocessing function (DESIGN contract 3): file or bytes -> uint8 [3, S, S]."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from asen import AsenError


class BadImageError(AsenError):
    """An image that cannot be decoded; the message names the file."""


def load_image(source: str | Path | bytes, size: int) -> np.ndarray:
    """Decode, apply EXIF orientation, convert to RGB, resize the short side to `size`
    (bilinear, antialiased) and centre-crop `size` x `size`. Returns uint8 [3, size, size]."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
        with fp, Image.open(fp) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError as e:
        raise BadImageError(f"{name}: image file not found") from e
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,
    ) as e:
        raise BadImageError(f"{name}: cannot decode image ({e})") from e
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
