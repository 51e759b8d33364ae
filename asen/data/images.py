"""The one preprocessing function (docs/architecture.md): file or bytes -> uint8 [3, S, S].

Decoding is bounded: an image whose header claims more than MAX_PIXELS pixels is refused
before any pixel is decoded (one BadImageError line, never Pillow's decompression-bomb
warning or traceback), and the resize works on the centre square's region of the source
only, so a tiny file of extreme aspect (say 40000 x 1) costs kilobytes, not gigabytes.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from asen import AsenError

MAX_PIXELS = 64 * 1024 * 1024  # decoded pixels an image may have (a 67-megapixel photo)
FULL_RESIZE_ASPECT = 16  # up to this aspect ratio the whole image is resized, then cropped
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)
_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-fA-F]+>")  # Pillow names the BytesIO


class BadImageError(AsenError):
    """An image that cannot be decoded; the message names the file."""


def _reason(error: Exception) -> str:
    """Pillow's message without the repr of the stream it read (`<_io.BytesIO object at
    0x...>`: an address, no use to the reader)."""
    return _OBJECT_REPR.sub("", str(error)).strip() or type(error).__name__


def _too_large(name: str, size: tuple[int, int] | None = None) -> BadImageError:
    claimed = f"{size[0]}x{size[1]} pixels, " if size else ""
    return BadImageError(f"{name}: image too large ({claimed}more than {MAX_PIXELS:,} pixels)")


@contextmanager
def open_image(source: str | Path | bytes) -> Iterator[Image.Image]:
    """Open an image file or encoded bytes (header only, nothing decoded yet), refusing one
    over MAX_PIXELS and anything that is not an image with one BadImageError line."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    except FileNotFoundError as e:
        raise BadImageError(f"{name}: image file not found") from e
    except OSError as e:
        raise BadImageError(f"{name}: cannot read image ({e.strerror or e})") from e
    with fp:
        try:
            with warnings.catch_warnings():  # Pillow's own bomb check warns: make it an error
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _too_large(name) from e
        except DECODE_ERRORS as e:
            raise BadImageError(f"{name}: cannot decode image ({_reason(e)})") from e
        with img:
            if img.width * img.height > MAX_PIXELS:
                raise _too_large(name, img.size)
            yield img


def centre_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` (bilinear, antialiased) and keep the centre
    `size` x `size` square. Up to an aspect ratio of FULL_RESIZE_ASPECT the whole image
    is resized, then cropped; beyond it only the square's region of the source is
    resampled (Pillow's `box`, whose float32 corners can move a pixel value by 1), so the
    cost stays that of a square however thin the image."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    if max(nw, nh) <= FULL_RESIZE_ASPECT * size:
        return img.resize((nw, nh), Image.BILINEAR).crop((left, top, left + size, top + size))
    # the square in source pixels (integer products first: the right edge is exactly w)
    box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
    return img.resize((size, size), Image.BILINEAR, box=box)


def load_image(source: str | Path | bytes, size: int) -> np.ndarray:
    """Decode, apply EXIF orientation, convert to RGB, resize the short side to `size`
    (bilinear, antialiased) and centre-crop `size` x `size`. Returns uint8 [3, size, size]."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    with open_image(source) as img:
        try:
            ImageOps.exif_transpose(img, in_place=True)  # no copy when already upright
            if img.mode != "RGB":
                img = img.convert("RGB")
            arr = np.asarray(centre_square(img, size), dtype=np.uint8)
        except DECODE_ERRORS as e:
            raise BadImageError(f"{name}: cannot decode image ({_reason(e)})") from e
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
