"""The Encoder base class through TorchEncoder, and ModelInfo (asen/model/shape.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from asen import AsenError
from asen.checkpoint import make_checkpoint
from asen.config import AttributeSpec, load_config
from asen.data.images import BadImageError, load_image
from asen.encoders import Encoder, TorchEncoder
from asen.model.asen import ASENPP
from asen.model.shape import ModelInfo

ATTRIBUTES = [AttributeSpec("collar", 3), AttributeSpec("sleeve", 4)]


@pytest.fixture(scope="module")
def encoder() -> TorchEncoder:
    cfg = load_config(["small"], ["model.threshold=0.8"])
    torch.manual_seed(0)
    model = ASENPP(cfg.model, len(ATTRIBUTES), 2)
    return TorchEncoder(model, ModelInfo.from_config(cfg.model, ATTRIBUTES, 2), batch_size=2)


def _images(n: int, s: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, s, s), dtype=np.uint8)


def test_model_info_from_config_checkpoint_and_metadata_agree(encoder) -> None:
    cfg = load_config(["small"])
    info = ModelInfo.from_config(cfg.model, ATTRIBUTES, 2)
    assert (info.source_size, info.dim) == (2 * cfg.model.image_size, 2 * cfg.model.embed_dim)
    assert ModelInfo.from_config(cfg.model, ATTRIBUTES, 1).dim == cfg.model.embed_dim
    ckpt = make_checkpoint(encoder.model, cfg, ATTRIBUTES)
    assert ModelInfo.from_checkpoint(ckpt) == info
    meta = info.to_metadata(max_batch=8)
    assert meta["max_batch"] == "8" and ModelInfo.from_metadata(meta) == info
    with pytest.raises(AsenError, match="exported.onnx: missing or malformed"):
        ModelInfo.from_metadata({"stage": "2"}, "exported.onnx")


def test_batches_give_the_same_embeddings_and_training_mode_is_kept(encoder) -> None:
    s = encoder.info.source_size
    images, attributes = _images(5, s), np.array([0, 1, 0, 1, 1])
    encoder.model.train()
    got = encoder.encode(images, attributes)  # batches of 2, 2, 1
    assert encoder.model.training
    encoder.model.eval()
    with torch.inference_mode():
        want = encoder.model(torch.from_numpy(images), torch.from_numpy(attributes)).numpy()
    assert got.shape == (5, encoder.info.dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert encoder.encode(images[:0], attributes[:0]).shape == (0, encoder.info.dim)


@pytest.mark.parametrize(
    "images, attributes, message",
    [
        (np.zeros((2, 3, 128, 128), np.float32), [0, 1], "images must be uint8"),
        (np.zeros((2, 3, 64, 64), np.uint8), [0, 1], r"images must be uint8 \[B,3,128,128\]"),
        (np.zeros((2, 3, 128, 128), np.uint8), [0], "attributes must be"),
        (np.zeros((2, 3, 128, 128), np.uint8), [0, 2], "attribute id 2 out of range"),
    ],
)
def test_inputs_no_backend_could_encode_are_one_line(encoder, images, attributes, message):
    with pytest.raises(AsenError, match=message):
        encoder.encode(images, np.array(attributes))


def test_encode_files_decodes_with_the_one_preprocessing_function(encoder, tmp_path) -> None:
    s = encoder.info.source_size
    good = tmp_path / "good.jpg"
    Image.fromarray(_images(1, 200, 1)[0].transpose(1, 2, 0)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="bad.jpg"):
        encoder.encode_files([good, bad], [0, 1], workers=0)
    emb, ok = encoder.encode_files([good, bad, good], [0, 1, 1], skip_bad=True, workers=0)
    assert ok.tolist() == [True, False, True]
    want = encoder.encode(np.stack([load_image(good, s)] * 2), np.array([0, 1]))
    np.testing.assert_allclose(emb[ok], want, atol=1e-5)
    assert encoder.input_kind == "tensors"


def test_close_runs_when_the_block_ends() -> None:
    closed = []

    class Counting(Encoder):
        backend = "counting"

        @classmethod
        def open(cls, model: str, **options) -> Counting:
            return cls()

        def encode_batch(self, images, attributes):
            return np.zeros((len(images), 1), np.float32)

        def describe(self) -> str:
            return "counting"

        def close(self) -> None:
            closed.append(True)

    with pytest.raises(RuntimeError), Counting.open("x"):
        raise RuntimeError("a failure inside the block")
    assert closed == [True]
