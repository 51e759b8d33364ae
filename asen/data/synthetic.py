"""A deterministic synthetic garment dataset in the reference split format.

Each attribute is drawn in its own region of a front-view garment. Region families are
assigned by attribute index, cycling neck, sleeves, hem, pattern, buttons; a family met a
second time (attributes 6-8) encodes its value as the colour of badges at that region.
Garment coordinates are in units of the image's short side (scaled), origin at the centre.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from asen import AsenError
from asen.atomic import atomic_write, atomic_write_text

DEFAULT_ATTRIBUTES = {"collar_design": 5, "sleeve_length": 4, "garment_length": 4, "pattern": 5}
FAMILIES = ("neck", "sleeves", "hem", "pattern", "buttons")
MAX_ATTRIBUTES, MAX_VALUES = 8, 10
Box = tuple[float, float, float, float]
REGIONS: dict[str, tuple[Box, ...]] = {  # (x0, y0, x1, y1) in garment coordinates
    "neck": ((-0.17, -0.43, 0.17, -0.17),),
    "sleeves": ((-0.48, -0.36, -0.17, 0.14), (0.17, -0.36, 0.48, 0.14)),
    "hem": ((-0.26, 0.15, 0.26, 0.44),),
    "pattern": ((-0.18, -0.16, 0.18, 0.06),),
    "buttons": ((-0.18, 0.06, 0.18, 0.155),),
}
SHOULDER, ARMPIT, HALF_WIDTH, WAIST = -0.32, -0.19, 0.18, 0.06
SLEEVE_MAX, SLEEVE_DIR = 0.30, (0.643, 0.766)  # sleeves point 50 degrees below horizontal
HEM_MIN, HEM_MAX = 0.23, 0.42
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class _Nuisance:
    """Everything about an image that no attribute controls."""

    w: int
    h: int
    scale: float
    jx: float
    jy: float
    bg: tuple[int, int, int]
    fg: tuple[int, int, int]
    accent: tuple[int, int, int]
    phase: tuple[float, float]
    noise: float


def _hsv(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> tuple:
    """A colour of random hue with saturation and value drawn from the given ranges."""
    rgb = colorsys.hsv_to_rgb(
        float(rng.random()), float(rng.uniform(*sat)), float(rng.uniform(*val))
    )
    return tuple(round(255 * c) for c in rgb)


def _nuisance(rng: np.random.Generator, image_size: int) -> _Nuisance:
    w, h = (int(v) for v in rng.integers(image_size, int(1.25 * image_size) + 1, 2))
    scale = float(rng.uniform(0.9, 1.1))
    jx, jy = (float(v) for v in rng.uniform(-0.03, 0.03, 2))
    # product-photo lighting: a light background, a darker garment, a light pattern; hue free
    bg = _hsv(rng, (0.0, 0.3), (0.75, 0.95))
    fg = _hsv(rng, (0.3, 0.9), (0.2, 0.5))
    accent = _hsv(rng, (0.0, 0.6), (0.75, 1.0))
    phase = (float(rng.random()), float(rng.random()))
    return _Nuisance(w, h, scale, jx, jy, bg, fg, accent, phase, float(rng.uniform(0.0, 8.0)))


def _families(counts: Sequence[int]) -> list[tuple[str, int]]:
    """(family, variant) per attribute: variant 0 draws the shape, 1 draws coloured badges."""
    return [(FAMILIES[i % len(FAMILIES)], i // len(FAMILIES)) for i in range(len(counts))]


def _palette(value: int, n: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(value / n, 1.0, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def _pattern_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture `kind` 0..9 (plain, h-stripes, v-stripes, dots, checks, two diagonals, grid,
    wide h-stripes, wide v-stripes) over garment coordinates u (columns), v (rows)."""
    u, v = np.broadcast_arrays(u, v)
    if kind == 0:
        return np.zeros(u.shape, bool)
    if kind == 3:
        return (u % 0.085 - 0.0425) ** 2 + (v % 0.085 - 0.0425) ** 2 < 0.026**2
    if kind == 4:
        return ((u / 0.09) % 1 < 0.5) ^ ((v / 0.09) % 1 < 0.5)
    if kind == 7:
        return ((u / 0.075) % 1 < 0.25) | ((v / 0.075) % 1 < 0.25)
    t = {1: v, 2: u, 5: u + v, 6: u - v, 8: v, 9: u}[kind]
    return (t / (0.14 if kind >= 8 else 0.075)) % 1 < 0.5


def render(
    values: Sequence[int], counts: Sequence[int], rng_seed: int, image_size: int = 128
) -> Image.Image:
    """Draw one garment with attribute `values` (one per entry of `counts`); every nuisance
    (size, position, scale, colours, pattern phase, noise) comes from `rng_seed` alone."""
    rng = np.random.default_rng(rng_seed)
    nz = _nuisance(rng, image_size)
    short = min(nz.w, nz.h)
    unit, cx, cy = 2 * short * nz.scale, nz.w + 2 * nz.jx * short, nz.h + 2 * nz.jy * short

    def px(x: float, y: float) -> tuple[float, float]:
        return cx + x * unit, cy + y * unit

    def ellipse(x: float, y: float, rx: float, ry: float, **kw) -> None:
        draw.ellipse([px(x - rx, y - ry), px(x + rx, y + ry)], **kw)

    shape = {"neck": 0, "sleeves": 1 / 3, "hem": 0.5, "pattern": 0, "buttons": 0}
    badges = []
    for (family, variant), value, n in zip(_families(counts), values, counts, strict=True):
        if variant == 0:
            shape[family] = value if family in ("neck", "pattern", "buttons") else value / (n - 1)
        else:
            badges.append((family, _palette(value, n)))
    hem = HEM_MIN + (HEM_MAX - HEM_MIN) * shape["hem"]
    img = Image.new("RGB", (2 * nz.w, 2 * nz.h), nz.bg)
    draw = ImageDraw.Draw(img)
    length = SLEEVE_MAX * shape["sleeves"]
    for s in (-1, 1) if length > 0 else ():
        dx, dy = s * SLEEVE_DIR[0] * length, SLEEVE_DIR[1] * length
        a, b = (s * HALF_WIDTH, SHOULDER), (s * HALF_WIDTH, ARMPIT)
        draw.polygon([px(*a), px(a[0] + dx, a[1] + dy), px(b[0] + dx, b[1] + dy), px(*b)], nz.fg)
    flare = HALF_WIDTH + 0.1 * (HEM_MAX - WAIST)  # full length, then cut at the hem
    torso = [(-HALF_WIDTH, SHOULDER), (HALF_WIDTH, SHOULDER), (HALF_WIDTH, WAIST),
             (flare, HEM_MAX), (-flare, HEM_MAX), (-HALF_WIDTH, WAIST)]  # fmt: skip
    draw.polygon([px(*p) for p in torso], fill=nz.fg)
    draw.rectangle([px(-flare - 0.01, hem), px(flare + 0.01, HEM_MAX + 0.01)], fill=nz.bg)
    _draw_neck(draw, px, ellipse, int(shape["neck"]), nz)
    for i in range(int(shape["buttons"])):
        ellipse(-0.13 + 0.065 * (i % 5), 0.085 + 0.045 * (i // 5), 0.02, 0.02, fill=nz.accent)
    centres = {"neck": (0.125, -0.265), "sleeves": (0.215, -0.25), "hem": (0.11, hem - 0.05)}
    for family, colour in badges:
        x, y = centres[family]
        for s in (-1, 1):
            ellipse(s * x, y, 0.025, 0.025, fill=colour, outline=(0, 0, 0), width=1 + short // 64)
    arr = np.array(img)
    box = REGIONS["pattern"][0]
    (x0, y0), (x1, y1) = ((round(c) for c in px(*p)) for p in (box[:2], box[2:]))
    u = (np.arange(x0, x1) - cx) / unit + nz.phase[0]
    v = (np.arange(y0, y1) - cy) / unit + nz.phase[1]
    arr[y0:y1, x0:x1][_pattern_mask(int(shape["pattern"]), u[None, :], v[:, None])] = nz.accent
    small = np.asarray(Image.fromarray(arr).reduce(2), np.float32)
    small += rng.standard_normal(small.shape, np.float32) * nz.noise
    return Image.fromarray(np.clip(small + 0.5, 0, 255).astype(np.uint8))


def _draw_neck(
    draw: ImageDraw.ImageDraw,
    px: Callable[[float, float], tuple[float, float]],
    ellipse: Callable[..., None],
    design: int,
    nz: _Nuisance,
) -> None:
    """Neckline `design` 0..9: round, V, square, high, none, boat, deep V, keyhole, shirt
    collar, high slit. Cuts show the background; added collar parts use the accent colour."""
    top = SHOULDER
    if design == 0:
        ellipse(0, top, 0.075, 0.08, fill=nz.bg)
    elif design == 1:
        draw.polygon([px(-0.1, top), px(0.1, top), px(0, top + 0.11)], fill=nz.bg)
    elif design == 2:
        draw.rectangle([px(-0.07, top), px(0.07, top + 0.08)], fill=nz.bg)
    elif design in (3, 9):
        draw.rectangle([px(-0.075, top - 0.085), px(0.075, top)], fill=nz.fg)
        draw.rectangle([px(-0.075, top - 0.015), px(0.075, top + 0.01)], fill=nz.accent)
        if design == 9:
            draw.rectangle([px(-0.018, top - 0.085), px(0.018, top + 0.07)], fill=nz.bg)
    elif design == 5:
        ellipse(0, top, 0.12, 0.035, fill=nz.bg)
    elif design == 6:
        draw.polygon([px(-0.05, top), px(0.05, top), px(0, top + 0.14)], fill=nz.bg)
    elif design == 7:
        ellipse(0, top, 0.05, 0.035, fill=nz.bg)
        ellipse(0, top + 0.07, 0.022, 0.03, fill=nz.bg)
    elif design == 8:
        draw.polygon([px(-0.05, top), px(0.05, top), px(0, top + 0.08)], fill=nz.bg)
        for s in (-1, 1):
            draw.polygon([px(s * 0.1, top - 0.01), px(s * 0.005, top + 0.07),
                          px(s * 0.09, top + 0.1)], fill=nz.accent)  # fmt: skip


def region_masks(counts: Sequence[int], rng_seed: int, image_size: int = 128) -> np.ndarray:
    """bool [A, H, W]: where each attribute may change the pixels of `render(..., rng_seed)`."""
    nz = _nuisance(np.random.default_rng(rng_seed), image_size)
    short = min(nz.w, nz.h)
    unit, cx, cy = short * nz.scale, nz.w / 2 + nz.jx * short, nz.h / 2 + nz.jy * short
    cols, rows = np.arange(nz.w), np.arange(nz.h)
    out = np.zeros((len(counts), nz.h, nz.w), bool)
    for i, (family, _) in enumerate(_families(counts)):
        for x0, y0, x1, y1 in REGIONS[family]:  # every pixel the box touches
            inside_x = (cols + 1 > cx + x0 * unit) & (cols < cx + x1 * unit)
            inside_y = (rows + 1 > cy + y0 * unit) & (rows < cy + y1 * unit)
            out[i] |= inside_y[:, None] & inside_x[None, :]
    return out


def _check(n_train: int, n_eval: int, attributes: dict[str, int], image_size: int) -> None:
    if n_train < 10:
        raise AsenError(f"n_train must be at least 10, got {n_train}")
    if n_eval < 5:
        raise AsenError(f"n_eval must be at least 5, got {n_eval}")
    if image_size < 32:
        raise AsenError(f"image_size must be at least 32, got {image_size}")
    if not 1 <= len(attributes) <= MAX_ATTRIBUTES:
        raise AsenError(f"attributes must name 1 to {MAX_ATTRIBUTES}, got {len(attributes)}")
    for name, n in attributes.items():
        if not isinstance(n, int) or not 2 <= n <= MAX_VALUES:
            raise AsenError(f"attribute {name!r} needs 2 to {MAX_VALUES} values, got {n}")


def write_lines(path: Path, lines: list[str]) -> None:
    """A split file (or any text file of lines), each line ended by a newline, atomically."""
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_dataset_yaml(out: Path, meta: dict) -> None:
    """`out/dataset.yaml`, keys in the order given."""
    atomic_write_text(out / "dataset.yaml", yaml.safe_dump(meta, sort_keys=False))


def generate(
    out: Path,
    seed: int = 0,
    n_train: int = 4000,
    n_eval: int = 1000,
    attributes: dict[str, int] | None = None,
    image_size: int = 128,
) -> dict:
    """Write the dataset under `out`; returns the dict written to `out/dataset.yaml`."""
    attributes = dict(DEFAULT_ATTRIBUTES if attributes is None else attributes)
    _check(n_train, n_eval, attributes, image_size)
    out = Path(out)
    if not isinstance(seed, int) or seed < 0:
        raise AsenError(f"seed must be a non-negative integer, got {seed}")
    if out.exists() and not out.is_dir():
        raise AsenError(f"{out}: exists and is not a folder; choose another output folder")
    try:
        return _write(
            out,
            seed=seed,
            n_train=n_train,
            n_eval=n_eval,
            attributes=attributes,
            image_size=image_size,
        )
    except OSError as e:
        raise AsenError(f"{e.filename or out}: cannot write ({e.strerror or e})") from None


def _write(
    out: Path, *, seed: int, n_train: int, n_eval: int, attributes: dict[str, int], image_size: int
) -> dict:
    """The files of `generate` (arguments already checked)."""
    counts = list(attributes.values())
    rng = np.random.default_rng(seed)
    n_queries = max(1, round(0.2 * n_eval))
    for split, n in zip(SPLITS, (n_train, n_eval, n_eval), strict=True):
        values = rng.integers(0, counts, size=(n, len(counts)))
        seeds = rng.integers(0, 2**62, size=n)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        names = [f"images/{split}/{i:06d}.png" for i in range(n)]
        for name, vals, image_seed in zip(names, values, seeds, strict=True):
            img = render(vals.tolist(), counts, int(image_seed), image_size)
            atomic_write(out / name, lambda fh, img=img: img.save(fh, "PNG", compress_level=1))
        write_lines(out / f"filenames_{split}.txt", names)
        if split == "train":
            labels = (" ".join(f"{a} {v}" for a, v in enumerate(vals)) for vals in values)
            write_lines(out / "label_train.txt", [f"{i} {lab}" for i, lab in enumerate(labels)])
        else:
            lines = [f"{i} {a} {v}" for i, vals in enumerate(values) for a, v in enumerate(vals)]
            cut = n_queries * len(counts)
            write_lines(out / f"query_{split}.txt", lines[:cut])
            write_lines(out / f"candidate_{split}.txt", lines[cut:])
    meta = {
        "name": "synthetic",
        "seed": seed,
        "attributes": [{"name": k, "values": v} for k, v in attributes.items()],
    }
    write_dataset_yaml(out, meta)
    return meta
