"""The batched crop boxes follow the reference's rule; the crop is an antialiased resize."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from asen.model.crop import FLAT, attention_boxes, crop, resize_weights

# ------------------------------------------------------------------ the reference's box rule


def upsample_linear(a: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's INTER_LINEAR upsampling of a float32 map to size x size: half-pixel
    centres, the border pixel repeated."""

    def taps(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(size) + 0.5) * (n / size) - 0.5
        low = np.floor(src).astype(int)
        frac = (src - low).astype(np.float32)
        frac[low < 0] = 0
        low[low < 0] = 0
        frac[low >= n - 1] = 0
        low[low >= n - 1] = n - 1
        return low, np.minimum(low + 1, n - 1), frac

    y0, y1, fy = taps(a.shape[0])
    x0, x1, fx = taps(a.shape[1])
    rows = a[y0] * (1 - fy)[:, None] + a[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx)[None] + rows[:, x1] * fx[None]


def reference_box(attention: np.ndarray, size: int, threshold: float) -> tuple[int, ...]:
    """One map, step by step as the reference does it: upsample, min-max normalise, uint8 by
    truncation, keep > 255 * threshold, bounding rectangle, square on its longer side from
    the centre (integer halving), moved inside the image."""
    up = upsample_linear(attention.astype(np.float32), size)
    norm = (up - up.min()) / (up.max() - up.min())
    level = (norm * 255).astype(np.uint8)
    ys, xs = np.nonzero(level > 255 * threshold)
    x, y = int(xs.min()), int(ys.min())
    w, h = int(xs.max()) - x + 1, int(ys.max()) - y + 1
    xc, yc, d = x + w // 2, y + h // 2, max(w, h)
    x = size - d if xc + d // 2 > size else max(0, xc - d // 2)
    y = size - d if yc + d // 2 > size else max(0, yc - d // 2)
    return x, y, x + d, y + d


def random_maps(n: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """Softmax attention maps [n, side, side]: noise at random temperatures, one to four
    blobs of random width and strength (weak second blobs included), and single peaks."""
    yy, xx = np.mgrid[0:side, 0:side]
    maps = np.empty((n, side, side))
    for i in range(n):
        kind = i % 3
        if kind == 0:
            logits = rng.normal(size=(side, side)) * rng.uniform(0.3, 4)
        elif kind == 1:
            logits = rng.normal(size=(side, side)) * rng.uniform(0, 0.3)
            for _ in range(rng.integers(1, 5)):
                cy, cx = rng.uniform(-1, side, 2)
                sigma = rng.uniform(0.4, side / 3)
                blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
                logits += rng.uniform(0.05, 4) * blob
        else:
            logits = np.zeros((side, side))
            logits[rng.integers(side), rng.integers(side)] = rng.uniform(1, 8)
        e = np.exp(logits - logits.max())
        maps[i] = e / e.sum()
    return maps.astype(np.float32)


@pytest.mark.parametrize(("side", "size", "n"), [(14, 224, 3000), (8, 64, 1500)])
def test_boxes_follow_the_reference_rule(side: int, size: int, n: int) -> None:
    """Thousands of random maps: asen's boxes equal the reference's within 1 px in >= 99.5%."""
    maps = random_maps(n, side, np.random.default_rng(side))
    got = np.concatenate(
        [
            attention_boxes(torch.from_numpy(maps[i : i + 500]), size, 0.1).numpy()
            for i in range(0, n, 500)
        ]
    )
    want = np.array([reference_box(m, size, 0.1) for m in maps])
    close = (np.abs(got - want) <= 1).all(axis=1)
    assert close.mean() >= 0.995, f"{close.mean():.4f} of {n} boxes within 1 px"
    sides = want[:, 2] - want[:, 0]
    assert (sides < size).mean() > 0.5  # most boxes are real crops, not the whole image
    assert len(np.unique(sides)) > 20  # of many sizes


def test_a_weak_second_blob_above_the_uint8_cut_widens_the_box() -> None:
    """A blob at normalised level 25.9/255 truncates to 25 (dropped); at 26.1/255 to 26 (kept):
    the > 0.1 float rule kept both."""
    for level, widened in ((25.9, False), (26.1, True)):
        a = np.zeros((14, 14), np.float32)
        a[2:4, 2:4], a[10:12, 10:12] = 1.0, level / 255  # plateaus at 1 and at `level`
        box = attention_boxes(torch.from_numpy(a)[None], 224, 0.1)[0].numpy()
        assert (box[2] - box[0] > 100) == widened, (level, box)
        np.testing.assert_allclose(box, reference_box(a, 224, 0.1), atol=1)


def uint8_box(attention: np.ndarray, size: int, threshold: float) -> tuple[float, ...]:
    """The same levels as the reference with asen's exact centring, for the exact check."""
    up = F.interpolate(
        torch.from_numpy(attention)[None, None],
        size=(size, size),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    span = up.max() - up.min()
    level = np.floor((up - up.min()) / span * 255) if span > FLAT * up.max() else np.zeros_like(up)
    ys, xs = np.nonzero(level > np.floor(255 * threshold))
    if len(xs) == 0:
        x1, y1, x2, y2 = 0, 0, size, size
    else:
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x2 - x1, y2 - y1)
    left = min(max((x1 + x2 - side) / 2, 0), size - side)
    top = min(max((y1 + y2 - side) / 2, 0), size - side)
    return left, top, left + side, top + side


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.9])
def test_boxes_are_square_inside_and_centred(threshold: float) -> None:
    rng = np.random.default_rng(0)
    maps = []
    for _ in range(64):
        a = rng.random((7, 7)) ** rng.uniform(1, 8)  # sharp and flat maps
        if rng.random() < 0.3:  # one peak near a border, so the square must shift inside
            a = np.zeros((7, 7))
            a[rng.integers(7), rng.integers(7)] = 1.0
        maps.append(a / a.sum())
    maps.append(np.full((7, 7), 1 / 49))  # constant map: the whole image
    att = torch.tensor(np.stack(maps), dtype=torch.float32)
    got = attention_boxes(att, 56, threshold).numpy()
    want = np.array([uint8_box(m.astype(np.float32), 56, threshold) for m in maps])
    np.testing.assert_allclose(got, want, atol=1e-5)
    side = got[:, 2] - got[:, 0]
    np.testing.assert_allclose(side, got[:, 3] - got[:, 1])  # square
    assert (got >= 0).all() and (got <= 56).all()  # inside the image
    np.testing.assert_allclose(got[-1], [0, 0, 56, 56])


def test_bf16_maps_give_the_fp32_boxes() -> None:
    maps = torch.from_numpy(random_maps(30, 14, np.random.default_rng(3))).bfloat16()
    np.testing.assert_array_equal(
        attention_boxes(maps, 224, 0.1), attention_boxes(maps.float(), 224, 0.1)
    )


# ------------------------------------------------------------------ the crop itself


def test_crop_equals_an_antialiased_resize_of_the_box() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 3, 128, 128)
    boxes = [(0, 0, 128, 128), (10, 20, 110, 120), (3, 3, 13, 13), (0, 64, 64, 128)]
    boxes += [(27, 0, 128, 101), (50, 50, 52, 52)]  # shrunk 5x ... enlarged 12x
    got = crop(x, torch.tensor(boxes, dtype=torch.float32), 24)
    assert got.shape == (6, 3, 24, 24)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        want = F.interpolate(
            x[i : i + 1, :, y1:y2, x1:x2], (24, 24), mode="bilinear", antialias=True
        )
        torch.testing.assert_close(got[i : i + 1], want, atol=2e-5, rtol=0)


def test_crop_matches_pil_crop_and_resize() -> None:
    """PIL's crop + BILINEAR resize of a uint8 image (what the reference runs), within
    PIL's own uint8 rounding of its two passes."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    boxes = [(0, 0, 96, 96), (5, 17, 73, 85), (40, 40, 52, 52)]
    got = crop(
        torch.from_numpy(image).permute(2, 0, 1)[None].float().expand(3, -1, -1, -1),
        torch.tensor(boxes, dtype=torch.float32),
        20,
    )
    for i, box in enumerate(boxes):
        want = np.asarray(Image.fromarray(image).crop(box).resize((20, 20), Image.BILINEAR))
        diff = np.abs(got[i].permute(1, 2, 0).numpy() - want)
        assert diff.max() <= 1.5, (box, diff.max())


def test_crop_takes_the_box_from_the_source_image() -> None:
    image = torch.zeros(2, 3, 32, 32)
    image[0, :, 8:16, 8:16] = 1.0  # a white square exactly where box 0 looks
    image[1, :, :, :] = torch.arange(32.0).view(1, 1, 32)  # a horizontal ramp
    boxes = torch.tensor([[8.0, 8.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]])
    out = crop(image, boxes, 8)
    # only pixels inside the box count: the black rim around the square never leaks in
    torch.testing.assert_close(out[0], torch.ones(3, 8, 8))
    # away from the borders the symmetric filter returns the ramp at the bin centres
    torch.testing.assert_close(out[1, 0, 0, 1:-1], torch.arange(1.0, 7.0) * 4 + 1.5)


def test_resize_weights_rows_sum_to_one_and_stay_in_the_span() -> None:
    start, end = torch.tensor([0.0, 10.0, 30.0]), torch.tensor([64.0, 20.0, 31.0])
    w = resize_weights(start, end, 64, 16)
    torch.testing.assert_close(w.sum(dim=2), torch.ones(3, 16))
    assert (w[1, :, :10] == 0).all() and (w[1, :, 20:] == 0).all()
    assert (w[2, :, 30] == 1).all()  # a one-pixel span: every output is that pixel
