"""The local branch sees what the reference feeds it: the embedding of asen's crop equals
the embedding of an antialiased resize of the same box (cosine >= 0.999), also where the
box is shrunk 4x or more and the image is full of fine detail."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asen.config import ModelConfig
from asen.data.images import load_image
from asen.data.synthetic import render
from asen.model.asen import ASENPP
from asen.model.crop import attention_boxes, crop

LOCAL = 24  # local input; the source is 128 px, so a box of 96 px or more shrinks 4x
MIN_COSINE = 0.999


def tiny_config(threshold: float = 0.1) -> ModelConfig:
    return ModelConfig(
        global_backbone="resnet_tiny",
        local_backbone="resnet_tiny",
        image_size=64,
        local_size=LOCAL,
        attr_dim=32,
        global_common=32,
        local_common=32,
        channel_hidden=32,
        embed_dim=64,
        threshold=threshold,
    )


def probe_images(size: int, n_noise: int = 4, n_garments: int = 4) -> np.ndarray:
    """uint8 [N, 3, size, size]: pixel noise (the worst case for aliasing) and garments."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (n_noise, 3, size, size), dtype=np.uint8)
    garments = []
    for seed in range(n_garments):
        buf = io.BytesIO()
        render([seed % 3, 1, seed % 2], [3, 4, 2], rng_seed=seed, image_size=size).save(buf, "PNG")
        garments.append(load_image(buf.getvalue(), size))
    return np.concatenate([noise, np.stack(garments)])


def reference_crops(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Per sample, as the reference does: cut the (integer) box out, then resize it with an
    antialiased bilinear filter."""
    out = []
    for image, (x1, y1, x2, y2) in zip(x, boxes.round().int().tolist(), strict=True):
        part = image[None, :, y1:y2, x1:x2]
        out.append(F.interpolate(part, (size, size), mode="bilinear", antialias=True))
    return torch.cat(out)


def large_box_maps(n: int, side: int) -> torch.Tensor:
    """Attention maps with two blobs far apart, so that the box spans most of the image."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:side, 0:side]
    maps = []
    for _ in range(n):
        logits = rng.normal(size=(side, side)) * 0.1
        for cy, cx in (rng.uniform(0, 2, 2), rng.uniform(side - 3, side, 2)):
            logits += 3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2)
        maps.append(np.exp(logits) / np.exp(logits).sum())
    return torch.tensor(np.stack(maps), dtype=torch.float32)


def cosines(model: ASENPP, a: torch.Tensor, b: torch.Tensor, attr: torch.Tensor) -> np.ndarray:
    e = model.attr_embedding(attr)
    with torch.no_grad():
        ea, _ = model.local_branch(a, e)
        eb, _ = model.local_branch(b, e)
    return F.cosine_similarity(ea, eb, dim=1).numpy()


@pytest.fixture(scope="module")
def model() -> ASENPP:
    torch.manual_seed(0)
    return ASENPP(tiny_config(), num_attributes=3, stage=2).eval()


def test_crop_of_shrunk_boxes_matches_an_antialiased_resize(model: ASENPP) -> None:
    s = model.source_size
    images = torch.from_numpy(probe_images(s))
    x = (images.float() - model.mean) / model.std
    boxes = attention_boxes(large_box_maps(len(x), 8), model.cfg.image_size, 0.1) * 2
    side = boxes[:, 2] - boxes[:, 0]
    assert (side >= 4 * LOCAL).all(), side  # every box is shrunk 4x or more
    assert (side < s).any()  # and not only the whole image
    attr = torch.arange(len(x)) % 3
    got = cosines(model, crop(x, boxes, LOCAL), reference_crops(x, boxes, LOCAL), attr)
    assert got.min() >= MIN_COSINE, got


def test_model_forward_uses_that_crop(model: ASENPP) -> None:
    """Through `branches`: the local embedding is that of the reference's crop of the
    model's own boxes (a low threshold, so the untrained model's boxes are large)."""
    torch.manual_seed(0)
    net = ASENPP(tiny_config(threshold=0.02), num_attributes=3, stage=2).eval()
    images = torch.from_numpy(probe_images(net.source_size))
    attr = torch.arange(len(images)) % 3
    with torch.no_grad():
        out = net.branches(images, attr)
        side = out.boxes[:, 2] - out.boxes[:, 0]
        assert (side >= 4 * LOCAL).all(), side
        x = (images.float() - net.mean) / net.std
        want, _ = net.local_branch(reference_crops(x, out.boxes, LOCAL), net.attr_embedding(attr))
    got = F.cosine_similarity(out.local_embedding, want, dim=1).numpy()
    assert got.min() >= MIN_COSINE, got
