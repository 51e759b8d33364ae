"""The exported ONNX graph (docs/architecture.md, "Exported graph"), its parity with PyTorch
and OnnxEncoder."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from asen.export.encoders import OnnxEncoder
from asen.export.layout import artifact_path, find_artifact, read_sidecar
from asen.export.onnx import OPSET, physical_cores
from asen.export.verify import ONNX_TOLERANCE, compare, probe_inputs

from asen import AsenError
from asen.backends import open_encoder
from asen.checkpoint import load_checkpoint
from asen.encoders import ModelInfo, TorchEncoder


@pytest.mark.parametrize("stage", [1, 2])
def test_graph_contract(repos, checkpoints, stage):
    path = artifact_path(repos[stage], "asen", "onnx")
    # model.py: the Python-backend variant of the Triton config (export.repository)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.json", "model.onnx", "model.py"]
    assert sorted(p.name for p in repos[stage].iterdir()) == [  # no staging left
        "asen",
        "asen_onnx",
        "asen_preprocess",
    ]
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
        ("", OPSET)
    ]
    t = onnx.TensorProto
    info = ModelInfo.from_checkpoint(load_checkpoint(checkpoints[stage]))
    s, d = info.source_size, info.dim

    def io(values):
        return [
            (
                v.name,
                v.type.tensor_type.elem_type,
                [x.dim_param or x.dim_value for x in v.type.tensor_type.shape.dim],
            )
            for v in values
        ]

    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert batch  # symbolic: dynamic batch
    assert io(model.graph.input) == [
        ("image", t.UINT8, [batch, 3, s, s]),
        ("attribute", t.INT64, [batch]),
    ]
    assert io(model.graph.output) == [("embedding", t.FLOAT, [batch, d])]
    assert not any(init.data_location == t.EXTERNAL for init in model.graph.initializer)
    # the crop is plain MatMul arithmetic (asen/model/crop.py): no RoiAlign plugin needed
    assert "RoiAlign" not in {n.op_type for n in model.graph.node}
    meta = {p.key: p.value for p in model.metadata_props}
    max_batch = "3" if stage == 1 else "64"
    assert meta == {**info.to_metadata(), "max_batch": max_batch}
    sidecar = read_sidecar(path)
    assert {k: sidecar[k] for k in meta} == meta
    assert ModelInfo.from_metadata(meta) == info


@pytest.mark.parametrize("stage", [1, 2])
def test_parity_with_pytorch(repos, checkpoints, stage):
    """Within the export tolerance at batch sizes 1, 3 (stage 1's max: chunked) and 7."""
    torch_enc = TorchEncoder.from_checkpoint(checkpoints[stage], "cpu")
    onnx_enc = OnnxEncoder(artifact_path(repos[stage], "asen", "onnx"), "cpu")
    images, attributes = probe_inputs(torch_enc.info, n_images=4, seed=7)
    expected = torch_enc.encode(images, attributes)
    if stage == 2:  # the crop is exercised: some boxes lie inside the image
        with torch.no_grad():
            boxes = torch_enc.model.branches(
                torch.from_numpy(images), torch.from_numpy(attributes)
            ).boxes
        assert (boxes[:, 2] - boxes[:, 0] < torch_enc.info.source_size).sum() >= 4
    for batch in (1, 3, 7):
        onnx_enc.batch_size = batch if stage == 2 else min(batch, 3)
        parity = compare(expected, onnx_enc.encode(images, attributes))
        print(f"stage {stage} batch {batch}: {parity}")
        assert parity.within(ONNX_TOLERANCE), parity


def test_onnx_encoder(repos, checkpoints):
    enc = open_encoder("onnx", str(repos[1]), device="auto", batch_size=64)
    assert enc.providers == ["CPUExecutionProvider"]  # no CUDA provider in this onnxruntime
    assert "CPUExecutionProvider" in enc.describe()
    assert enc.batch_size == 3  # capped at the graph's max batch
    assert enc.info == ModelInfo.from_checkpoint(load_checkpoint(checkpoints[1]))
    s = enc.info.source_size
    assert enc.encode(np.zeros((0, 3, s, s), np.uint8), np.zeros(0, np.int64)).shape == (0, 128)
    with pytest.raises(AsenError, match="attribute id 4 out of range"):
        enc.encode(np.zeros((2, 3, s, s), np.uint8), np.array([0, 4]))
    with pytest.raises(AsenError, match="images must be uint8"):
        enc.encode(np.zeros((1, 3, s, s), np.float32), np.array([0]))
    with pytest.raises(AsenError, match="no CUDAExecutionProvider"):
        OnnxEncoder(find_artifact(repos[1], "onnx"), "cuda")


def test_find_artifact(repos, tmp_path):
    path = artifact_path(repos[2], "asen", "onnx")
    for given in (repos[2], path.parent.parent, path.parent, path):
        assert find_artifact(given, "onnx") == path
    with pytest.raises(AsenError, match="no model.plan"):
        find_artifact(repos[2], "trt")
    with pytest.raises(AsenError, match="expected a model.onnx file"):
        find_artifact(path.parent / "model.json", "onnx")
    with pytest.raises(AsenError, match="no such artifact"):
        find_artifact(tmp_path / "missing", "onnx")
    for name in ("a_onnx", "b_onnx"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.onnx").write_bytes(b"")
    with pytest.raises(AsenError, match="several onnx models"):
        find_artifact(tmp_path, "onnx")
    with pytest.raises(AsenError, match="not a loadable ONNX model"):
        OnnxEncoder(tmp_path / "a_onnx" / "1" / "model.onnx")


def test_physical_cores():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))
