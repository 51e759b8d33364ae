"""The one preprocessing function (docs/architecture.md, "Preprocessing"): file or bytes ->
uint8 [3, S, S]."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asen.data.images import MAX_PIXELS, BadImageError, load_image

S = 32
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def check(out: np.ndarray, size: int = S) -> None:
    assert out.dtype == np.uint8
    assert out.shape == (3, size, size)
    assert out.flags["C_CONTIGUOUS"]


# ------------------------------------------------------------------ modes and shapes


@pytest.mark.parametrize("w, h", [(90, 40), (40, 90), (S, S), (10, 7), (200, 33)])
def test_shapes_landscape_portrait_small(tmp_path, w, h):
    path = tmp_path / "x.png"
    Image.fromarray(noise(h, w)).save(path)
    check(load_image(path, S))
    check(load_image(str(path), 24), 24)


def test_grayscale_gives_three_equal_channels(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(noise(50, 70)[..., 0], mode="L").save(path)
    out = load_image(path, S)
    check(out)
    assert (out[0] == out[1]).all() and (out[1] == out[2]).all()
    assert out.std() > 10  # the content survives


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[..., 3] = 0  # fully transparent: the colour is kept, alpha ignored
    path = tmp_path / "a.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = load_image(path, S)
    check(out)
    assert (out.reshape(3, -1).T == (10, 200, 30)).all()


def test_palette_image(tmp_path):
    img = Image.new("P", (50, 30))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    px = np.zeros((30, 50), np.uint8)
    px[:, 25:] = 1
    img.putdata(px.ravel().tolist())
    path = tmp_path / "p.png"
    img.save(path)
    out = load_image(path, S)
    check(out)
    assert tuple(out[:, S // 2, 1]) == RED  # left half red
    assert tuple(out[:, S // 2, S - 2]) == BLUE  # right half blue


def test_bytes_equal_file(tmp_path):
    img = Image.fromarray(noise(45, 61, seed=3))
    path = tmp_path / "b.png"
    img.save(path)
    data = path.read_bytes()
    np.testing.assert_array_equal(load_image(data, S), load_image(path, S))
    np.testing.assert_array_equal(load_image(bytearray(data), S), load_image(path, S))


def test_jpeg_and_unchanged_when_already_square(tmp_path):
    arr = noise(S, S, seed=5)
    out = load_image(encode(Image.fromarray(arr)), S)
    np.testing.assert_array_equal(out, arr.transpose(2, 0, 1))  # S x S in, same pixels out
    check(load_image(encode(Image.fromarray(noise(50, 80)), "JPEG"), S))


# ------------------------------------------------------------------ centre crop


def banded(w: int, h: int, horizontal: bool) -> Image.Image:
    """Three bands along the long side: green | red | blue, red in the central third."""
    arr = np.zeros((h, w, 3), np.uint8)
    if horizontal:
        arr[:, : w // 3] = GREEN
        arr[:, w // 3 : 2 * w // 3] = RED
        arr[:, 2 * w // 3 :] = BLUE
    else:
        arr[: h // 3] = GREEN
        arr[h // 3 : 2 * h // 3] = RED
        arr[2 * h // 3 :] = BLUE
    return Image.fromarray(arr)


@pytest.mark.parametrize("horizontal", [True, False])
def test_centre_crop_is_centred(horizontal):
    w, h = (300, 100) if horizontal else (100, 300)
    out = load_image(encode(banded(w, h, horizontal)), S).astype(int)
    # the crop is exactly the central square: red everywhere but a one-pixel blend at the edges
    inner = out[:, 1:-1, 1:-1]
    assert (inner[0] == 255).all() and (inner[1] == 0).all() and (inner[2] == 0).all()
    # and symmetric: the edges leak as much green on one side as blue on the other
    if horizontal:
        assert abs(out[1, :, 0].sum() - out[2, :, -1].sum()) <= S
    else:
        assert abs(out[1, 0, :].sum() - out[2, -1, :].sum()) <= S


def test_crop_matches_independent_resize_then_crop():
    arr = noise(60, 150, seed=7)
    out = load_image(encode(Image.fromarray(arr)), S)
    # short side 60 -> S: width 150 * S / 60 = 80; centre S columns start at (80 - S) // 2
    resized = np.asarray(Image.fromarray(arr).resize((80, S), Image.BILINEAR))
    left = (80 - S) // 2
    np.testing.assert_array_equal(out, resized[:, left : left + S].transpose(2, 0, 1))


# ------------------------------------------------------------------ EXIF orientation


def with_orientation(raw: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(raw), "JPEG", quality=95, exif=exif.tobytes())


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([255 * x // w, 255 * y // h, 128 + 0 * x], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("orientation, k", [(6, -1), (8, 1), (3, 2), (1, 0)])
def test_exif_orientation_applied(orientation, k):
    """Orientation 6 = rotate 90 clockwise to display, 8 = 90 anticlockwise, 3 = 180."""
    data = with_orientation(gradient(40, 72), orientation)
    out = load_image(data, S)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # raw pixels, no EXIF
    upright = np.ascontiguousarray(np.rot90(decoded, k=k))
    expected = load_image(encode(Image.fromarray(upright)), S)
    np.testing.assert_array_equal(out, expected)
    if k:  # the test can tell orientations apart
        unrotated = load_image(encode(Image.fromarray(decoded)), S)
        assert np.abs(out.astype(int) - unrotated).mean() > 20


# ------------------------------------------------------------------ bad images


def tiny_png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))


def assert_bad(path) -> str:
    with pytest.raises(BadImageError) as e:
        load_image(path, S)
    msg = str(e.value)
    assert str(path) in msg
    assert "\n" not in msg
    return msg


def test_random_bytes_file(tmp_path):
    path = tmp_path / "random.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    assert_bad(path)


def test_truncated_png(tmp_path):
    data = encode(Image.fromarray(noise(64, 64)))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    assert_bad(path)


def test_truncated_jpeg(tmp_path):
    data = encode(Image.fromarray(noise(64, 64)), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    assert_bad(path)


def test_empty_file_and_text_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_bad(empty)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    assert_bad(text)


def test_header_claiming_huge_size(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(tiny_png_header(40000, 40000))
    assert_bad(path)


def test_missing_file(tmp_path):
    msg = assert_bad(tmp_path / "gone.png")
    assert "not found" in msg


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "dir.png").mkdir()
    assert_bad(tmp_path / "dir.png")


def test_bad_bytes():
    with pytest.raises(BadImageError, match="<bytes>"):
        load_image(b"not an image at all", S)


# ------------------------------------------------------------------ bounded cost


def resize_then_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """The definition: resize the short side to `size` (PIL bilinear), crop the centre."""
    h, w = arr.shape[:2]
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    resized = Image.fromarray(arr).resize((nw, nh), Image.BILINEAR)
    return np.asarray(resized.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def test_identical_to_resize_then_crop_for_ordinary_aspect_ratios():
    rng = np.random.default_rng(11)
    for i in range(40):
        w, h = (int(v) for v in rng.integers(3, 400, 2))
        if max(w, h) > 16 * min(w, h):
            continue
        size = int(rng.choice([24, 32, 57, 64]))
        arr = noise(h, w, seed=i)
        got = load_image(encode(Image.fromarray(arr)), size)
        np.testing.assert_array_equal(got, resize_then_crop(arr, size), err_msg=f"{w}x{h}")


@pytest.mark.parametrize(("w", "h"), [(1000, 20), (7, 600), (3000, 2)])
def test_thin_images_resample_only_the_centre_square(w, h):
    """Beyond 16:1 only the centre's region is resampled: within one level of the
    definition (Pillow's float32 box corners), at the cost of a square."""
    arr = noise(h, w, seed=w)
    got = load_image(encode(Image.fromarray(arr)), S)
    assert np.abs(got.astype(int) - resize_then_crop(arr, S)).max() <= 1


PEAK_SCRIPT = """
import io, sys
from PIL import Image
from asen.data.images import load_image

def png(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "PNG", optimize=True)
    return buf.getvalue()

def kib(field):  # this process image's resident (VmRSS) and peak resident (VmHWM) memory
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

load_image(png(8, 8), 32)  # Pillow's plugins are loaded before the baseline
data = png(int(sys.argv[1]), int(sys.argv[2]))
resident = kib("VmRSS")
out = load_image(data, 448)
print(len(data), out.shape[1], out.shape[2], (kib("VmHWM") - resident) / 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(("w", "h"), [(40000, 1), (1, 40000)])
def test_a_tiny_thin_png_costs_little_memory(w, h):
    """A 40000 x 1 PNG of about 200 bytes: resizing its short side to 448 first would make a
    17.9-million-pixel-wide image (gigabytes); the extra peak memory stays under 100 MB."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(w), str(h)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    size, out_h, out_w, extra_mib = done.stdout.split()
    assert int(size) < 300 and (int(out_h), int(out_w)) == (448, 448)
    assert float(extra_mib) < 100, f"{float(extra_mib):.1f} MiB extra peak memory"


@pytest.mark.parametrize("side", [9000, 10000, 40000])
def test_too_many_pixels_is_one_line_and_no_warning(tmp_path, side):
    """9000^2 is over asen's bound, 10000^2 over Pillow's warning limit, 40000^2 over its
    error limit: the same one-line error, nothing decoded, no DecompressionBombWarning."""
    path = tmp_path / "big.png"
    path.write_bytes(tiny_png_header(side, side))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = assert_bad(path)
    assert "too large" in msg and f"{MAX_PIXELS:,}" in msg
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
