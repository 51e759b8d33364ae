"""The exported graph crops as the reference does: through ONNX Runtime, the local half of
the embedding equals the local embedding of an antialiased resize of the same boxes
(cosine >= 0.999), with boxes shrunk 4x or more and images full of fine detail."""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from asen.export.onnx import export_onnx, session

from asen.config import AttributeSpec
from asen.encoders import ModelInfo
from asen.model.asen import ASENPP
from tests.asen.model.test_crop_parity import (
    LOCAL,
    MIN_COSINE,
    probe_images,
    reference_crops,
    tiny_config,
)

ATTRIBUTES = [AttributeSpec("a", 3), AttributeSpec("b", 2), AttributeSpec("c", 4)]


def test_onnx_runtime_crop_matches_an_antialiased_resize(tmp_path) -> None:
    torch.manual_seed(0)
    model = ASENPP(tiny_config(threshold=0.02), len(ATTRIBUTES), stage=2).eval()
    s, d = model.source_size, model.cfg.embed_dim
    info = ModelInfo(
        attributes=ATTRIBUTES, source_size=s, dim=model.embedding_dim, beta=model.cfg.beta, stage=2
    )
    path = tmp_path / "model.onnx"
    export_onnx(model, info, path, max_batch=16)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "RoiAlign" not in ops  # plain arithmetic: no plugin, no backend defaults involved

    images = probe_images(s)
    attributes = np.arange(len(images), dtype=np.int64) % len(ATTRIBUTES)
    (embedding,) = session(path, "cpu").run(None, {"image": images, "attribute": attributes})
    local = embedding[:, d:] / math.sqrt(1 - model.cfg.beta)  # l2-normalised local embedding

    x, a = torch.from_numpy(images), torch.from_numpy(attributes)
    with torch.no_grad():
        boxes = model.branches(x, a).boxes
        assert (boxes[:, 2] - boxes[:, 0] >= 4 * LOCAL).all()  # shrunk 4x or more
        crops = reference_crops((x.float() - model.mean) / model.std, boxes, LOCAL)
        want, _ = model.local_branch(crops, model.attr_embedding(a))
    got = F.cosine_similarity(torch.from_numpy(local), want, dim=1).numpy()
    assert got.min() >= MIN_COSINE, got
