"""The all-attributes function: one global backbone pass per image, every attribute's
embedding equal to the pair forward's."""

import pytest
import torch

from asen.config import load_config
from asen.model.asen import ASENPP
from asen.model.crop import crop, crop_each


@pytest.fixture(scope="module")
def cfg():
    return load_config(["small"]).model


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("stage", [1, 2])
def test_every_attribute_equals_the_pair_forward(cfg, stage: int) -> None:
    torch.manual_seed(stage)
    attributes = 4
    model = ASENPP(cfg, attributes, stage).eval()
    image = _images(3, cfg.source_size, seed=stage)
    with torch.no_grad():
        together = model.forward_all(image)
        pairs = model(
            image.repeat_interleave(attributes, dim=0), torch.arange(attributes).repeat(3)
        ).view(3, attributes, -1)
    assert together.shape == (3, attributes, model.embedding_dim)
    cosine = (together * pairs).sum(dim=2)
    assert cosine.min().item() >= 0.99999
    torch.testing.assert_close(together, pairs, atol=1e-5, rtol=1e-5)
    # the attributes really differ: a mix-up of rows would be caught above
    assert not torch.allclose(together[:, 0], together[:, 1], atol=1e-3)


def test_the_global_backbone_runs_once_per_image(cfg) -> None:
    torch.manual_seed(0)
    model = ASENPP(cfg, 5, 2).eval()
    seen = []
    hook = model.global_branch.backbone.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[0])
    )
    try:
        with torch.no_grad():
            model.forward_all(_images(2, cfg.source_size))
    finally:
        hook.remove()
    assert seen == [2]  # the pair graph would run it on 2 * 5 rows


def test_crop_each_equals_crop_of_each_pair() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g)
    corner = torch.rand(2, 3, 2, generator=g) * 16
    side = 4 + torch.rand(2, 3, 1, generator=g) * 12
    boxes = torch.cat([corner, corner + side], dim=2)  # [B, A, 4] squares inside the image
    together = crop_each(images, boxes, 8)
    one_by_one = crop(images.repeat_interleave(3, dim=0), boxes.flatten(0, 1), 8)
    assert together.shape == (6, 3, 8, 8)
    torch.testing.assert_close(together, one_by_one, atol=1e-6, rtol=1e-6)
