"""The batched crop equals a plain per-sample implementation of the reference algorithm."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asen.model.crop import FLAT, attention_boxes, crop


def reference_box(attention: np.ndarray, size: int, threshold: float) -> tuple[float, ...]:
    """Per sample, as the reference does it: upsample, normalise, threshold, box, square."""
    up = F.interpolate(
        torch.from_numpy(attention)[None, None],
        size=(size, size),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    span = up.max() - up.min()
    norm = (up - up.min()) / span if span > FLAT * up.max() else np.zeros_like(up)
    ys, xs = np.nonzero(norm > threshold)
    if len(xs) == 0:
        x1, y1, x2, y2 = 0, 0, size, size
    else:
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x2 - x1, y2 - y1)
    left = min(max((x1 + x2 - side) / 2, 0), size - side)
    top = min(max((y1 + y2 - side) / 2, 0), size - side)
    return left, top, left + side, top + side


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.9])
def test_boxes_equal_per_sample_reference(threshold: float) -> None:
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
    want = np.array([reference_box(m.astype(np.float32), 56, threshold) for m in maps])
    np.testing.assert_allclose(got, want, atol=1e-5)
    side = got[:, 2] - got[:, 0]
    np.testing.assert_allclose(side, got[:, 3] - got[:, 1])  # square
    assert (got >= 0).all() and (got <= 56).all()  # inside the image
    np.testing.assert_allclose(got[-1], [0, 0, 56, 56])


def test_crop_takes_the_box_from_the_source_image() -> None:
    image = torch.zeros(2, 3, 32, 32)
    image[0, :, 8:16, 8:16] = 1.0  # a white square exactly where box 0 looks
    image[1, :, :, :] = torch.arange(32.0).view(1, 1, 32)  # a horizontal ramp
    boxes = torch.tensor([[8.0, 8.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]])
    out = crop(image, boxes, 8)
    assert out.shape == (2, 3, 8, 8)
    # inside the box every sample is white; border samples interpolate with the black rim
    assert torch.allclose(out[0, :, 1:-1, 1:-1], torch.ones(3, 6, 6))
    assert (out[0] > 0.5).all()
    # a box covering the whole image resamples the ramp at 4-pixel steps (bin centres)
    assert torch.allclose(out[1, 0, 0], torch.arange(8.0) * 4 + 1.5, atol=1e-5)
