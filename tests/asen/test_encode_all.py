"""`Encoder.encode_all`: every attribute of every image, through the all-attributes function
where the backend has it and through pair passes where it does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asen import AsenError
from asen.config import AttributeSpec, load_config
from asen.encoders import TorchEncoder
from asen.model.asen import ASENPP
from asen.model.shape import ModelInfo

ATTRIBUTES = [AttributeSpec("collar", 3), AttributeSpec("sleeve", 4), AttributeSpec("hem", 2)]


class PairsOnly(TorchEncoder):
    """A backend without an all-attributes graph: the base class's pair fallback."""

    @property
    def has_all_graph(self) -> bool:
        return False

    def encode_all(self, images: np.ndarray) -> np.ndarray:
        return super(TorchEncoder, self).encode_all(images)


@pytest.fixture(scope="module", params=[1, 2], ids=["stage1", "stage2"])
def model_and_info(request):
    cfg = load_config(["small"])
    torch.manual_seed(request.param)
    model = ASENPP(cfg.model, len(ATTRIBUTES), request.param).eval()
    return model, ModelInfo.from_config(cfg.model, ATTRIBUTES, request.param)


def _images(n: int, s: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 3, s, s), dtype=np.uint8)


def test_all_graph_and_pair_fallback_equal_pair_encoding(model_and_info) -> None:
    model, info = model_and_info
    images = _images(5, info.source_size)
    count = len(ATTRIBUTES)
    pairs = TorchEncoder(model, info, batch_size=4)
    expected = pairs.encode(
        np.repeat(images, count, axis=0), np.tile(np.arange(count), len(images))
    ).reshape(5, count, info.dim)
    fast = TorchEncoder(model, info, batch_size=4)  # 4 // 3 attributes: one image a batch
    slow = PairsOnly(model, info, batch_size=4)
    assert fast.has_all_graph and not slow.has_all_graph
    assert fast.all_batch_size == 1
    for encoder in (fast, slow):
        got = encoder.encode_all(images)
        assert got.shape == (5, count, info.dim) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_encode_all_of_nothing_and_bad_images(model_and_info) -> None:
    model, info = model_and_info
    encoder = TorchEncoder(model, info)
    empty = encoder.encode_all(np.zeros((0, 3, info.source_size, info.source_size), np.uint8))
    assert empty.shape == (0, len(ATTRIBUTES), info.dim)
    with pytest.raises(AsenError, match="images must be uint8"):
        encoder.encode_all(np.zeros((1, 3, 8, 8), np.float32))
