"""FP16 and INT8 graphs (`asen export --precision`): what runs in reduced precision, the Q/DQ
format each engine wants, the sidecars, the calibration set, and ONNX Runtime running them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from asen.export.calibrate import CalibrationSource, calibration_set, choose_pairs
from asen.export.encoders import OnnxEncoder
from asen.export.layout import in_model, read_sidecar
from asen.export.onnx import check_onnx
from asen.export.precision import parse_precisions, reduced_nodes
from asen.export.verify import probe_inputs
from onnx import numpy_helper

from asen import AsenError
from asen.data.splits import open_dataset
from asen.model.shape import ModelInfo

KEPT_FP32 = {"Softmax", "RoiAlign", "ReduceL2", "Resize", "ReduceMin", "ReduceMax", "Div", "Sub"}


def test_parse_precisions():
    assert parse_precisions(["int8,fp32", "fp16", "FP32"]) == ["fp32", "fp16", "int8"]
    assert parse_precisions([]) == ["fp32"]
    with pytest.raises(AsenError, match=r"--precision bf16: unknown precision \(use fp32"):
        parse_precisions(["fp16,bf16"])


def test_reduced_nodes_are_backbone_and_linear_only(repos):
    model = onnx.load(str(in_model(repos[2], "asen_onnx")))
    chosen = reduced_nodes(model)
    nodes = {n.name: n for n in model.graph.node}
    kinds = {nodes[n].op_type for n in chosen}
    assert kinds <= {"Conv", "Relu", "Add", "MaxPool", "Gemm"} and "Conv" in kinds
    backbone_convs = {
        n.name for n in model.graph.node if n.op_type == "Conv" and ".backbone." in n.input[1]
    }
    assert backbone_convs <= chosen
    attention_convs = {n.name for n in model.graph.node if n.op_type == "Conv"} - backbone_convs
    assert attention_convs and not attention_convs & chosen  # attention maps stay fp32
    assert all(n.op_type not in KEPT_FP32 for n in model.graph.node if n.name in chosen)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_fp16_graph_keeps_io_and_sensitive_parts_fp32(precision_repo, checkpoints):
    from asen.checkpoint import load_checkpoint

    path = in_model(precision_repo, "asen_onnx_fp16")
    check_onnx(path, ModelInfo.from_checkpoint(load_checkpoint(checkpoints[2])))  # contract I/O
    model = onnx.load(str(path))
    types = _types(model)
    t = onnx.TensorProto
    for node in model.graph.node:
        if node.op_type in ("Softmax", "RoiAlign", "ReduceL2"):
            assert types[node.output[0]] == t.FLOAT, node.name
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert {types[n.output[0]] for n in convs} == {t.FLOAT16, t.FLOAT}  # backbone / attention
    meta = read_sidecar(path)
    assert meta["precision"] == "fp16" and meta["converter"].startswith("onnxconverter-common ")
    assert {p.key: p.value for p in model.metadata_props}["precision"] == "fp16"


def _activation_zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    """Zero points of the QuantizeLinear nodes (weights are stored quantized: only
    activations are quantized at run time)."""
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [
        weights[n.input[2]]
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in weights
    ]


@pytest.mark.parametrize(
    "model_name, dtype", [("asen_onnx_int8", np.uint8), ("asen_onnx_int8_trt", np.int8)]
)
def test_int8_graphs_are_qdq_with_the_engine_activation_type(precision_repo, model_name, dtype):
    model = onnx.load(str(in_model(precision_repo, model_name)))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    zero_points = _activation_zero_points(model)
    assert zero_points and all(z.dtype == dtype for z in zero_points)
    if dtype == np.int8:  # TensorRT: symmetric activations
        assert all((z == 0).all() for z in zero_points)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv_weights = [  # per output channel, symmetric: a scale per channel, zero points 0
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in weights
        if weights[n.input[0]].dtype == np.int8 and weights[n.input[0]].ndim == 4
    ]
    assert conv_weights
    for n in conv_weights:
        assert weights[n.input[1]].shape == (weights[n.input[0]].shape[0],)
        assert (weights[n.input[2]] == 0).all()
    quantized_inputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:  # no Q/DQ in front of the attention and box computation
        if node.op_type in ("Softmax", "RoiAlign", "ReduceL2", "Resize"):
            assert not set(node.input) & quantized_inputs, node.name


def test_int8_sidecar_records_calibration(precision_repo, synth):
    for model_name, engine in (
        ("asen_onnx_int8", "ONNX Runtime CPU"),
        ("asen_onnx_int8_trt", "TensorRT"),
    ):
        meta = read_sidecar(in_model(precision_repo, model_name))
        assert meta["precision"] == "int8" and meta["quantizer"].startswith("onnxruntime ")
        assert meta["calibration_root"] == str(synth.resolve())
        assert (meta["calibration_split"], meta["calibration_images"]) == ("train", "8")
        assert engine in meta["int8_activations"]
        assert meta["verified_on"].endswith("(valid split)") and "map" in meta


def test_every_precision_runs_in_onnx_runtime(precision_repo):
    fp32 = OnnxEncoder(in_model(precision_repo, "asen_onnx"), "cpu")
    images, attributes = probe_inputs(fp32.info, n_images=2)
    expected = fp32.encode(images, attributes)
    for model_name in ("asen_onnx_fp16", "asen_onnx_int8", "asen_onnx_int8_trt"):
        got = OnnxEncoder(in_model(precision_repo, model_name), "cpu").encode(images, attributes)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
        cosine = (got * expected).sum(axis=1)
        assert cosine.mean() > 0.95, model_name


def test_calibration_pairs_cover_every_attribute(synth):
    dataset = open_dataset(synth)
    pairs = choose_pairs(dataset, CalibrationSource(synth, "train", 8))
    assert len(pairs) == 8 and len(set(pairs[:, 0])) == 8  # distinct images
    assert set(pairs[:, 1]) == set(range(len(dataset.attributes)))
    labels = dataset.train_labels()
    assert all(labels[i, a] >= 0 for i, a in pairs)
    again = choose_pairs(dataset, CalibrationSource(synth, "train", 8))
    assert (pairs == again).all()  # seeded


def test_calibration_set_errors(synth, tmp_path, checkpoints):
    from asen.checkpoint import load_checkpoint

    info = ModelInfo.from_checkpoint(load_checkpoint(checkpoints[2]))
    with pytest.raises(AsenError, match="the train split has 10 images, fewer than"):
        calibration_set(CalibrationSource(synth, "train", 11), info)
    with pytest.raises(AsenError, match="--calibrate .*: dataset root not found"):
        calibration_set(CalibrationSource(tmp_path / "none", "train", 4), info)
    with pytest.raises(AsenError, match="--split dev: expected one of train, valid, test"):
        calibration_set(CalibrationSource(synth, "dev", 4), info)
    other = info.attributes[:2]
    (tmp_path / "d").mkdir()
    for f in synth.iterdir():
        if f.is_file():
            (tmp_path / "d" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "d" / "images").symlink_to(synth / "images")
    meta = {"attributes": [{"name": a.name, "values": a.values} for a in other]}
    (tmp_path / "d" / "dataset.yaml").write_text(json.dumps(meta))
    with pytest.raises(AsenError, match="do not match the checkpoint's"):
        calibration_set(CalibrationSource(tmp_path / "d", "train", 4), info)


def test_every_precision_is_served_by_a_real_tritonserver(precision_repo, tmp_path):
    """`asen serve`'s server loads every precision's model and ensemble (the bundled server
    runs the graphs through the Python-backend ONNX Runtime model), and Triton's INT8
    embeddings are ONNX Runtime's."""
    from asen.client.server import free_port, start_server
    from asen.client.triton import TritonEncoder

    ports = {k: free_port() for k in ("http_port", "grpc_port", "metrics_port")}
    with start_server(precision_repo, log_file=tmp_path / "server.log", **ports) as handle:
        ready = {m["name"] for m in handle.index() if m.get("state") == "READY"}
        expected = {"asen", "asen_fp16", "asen_int8", "asen_preprocess"}
        expected |= {"asen_onnx", "asen_onnx_fp16", "asen_onnx_int8", "asen_onnx_int8_trt"}
        assert expected <= ready
        local = OnnxEncoder(in_model(precision_repo, "asen_onnx_int8"), "cpu")
        images, attributes = probe_inputs(local.info, n_images=2)
        with TritonEncoder(handle.grpc_url, "asen_onnx_int8") as served:
            got = served.encode(images, attributes)
    assert np.abs(got - local.encode(images, attributes)).max() < 1e-5


@pytest.mark.parametrize("model_name", ["asen_onnx_fp16", "asen_onnx_int8"])
def test_eval_and_embed_take_reduced_precision_models(precision_repo, synth, tmp_path, model_name):
    """`asen eval --backend onnx` on a precision's model folder gives the valid-split mAP
    that export's verification recorded in its model.json; `asen embed` writes its rows."""
    from typer.testing import CliRunner

    from asen.cli import app

    runner = CliRunner()
    folder = precision_repo / model_name
    out = tmp_path / "eval.json"
    common = ["--data", str(synth), "--backend", "onnx", "--workers", "0", "--device", "cpu"]
    result = runner.invoke(
        app, ["eval", str(folder), *common, "--split", "valid", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    recorded = float(read_sidecar(in_model(precision_repo, model_name))["map"])
    assert abs(json.loads(out.read_text())["overall_map"] - recorded) < 1e-5
    npz = tmp_path / "gallery.npz"
    result = runner.invoke(app, ["embed", str(folder), *common, "--out", str(npz)])
    assert result.exit_code == 0, result.output
    assert (
        np.load(npz)["embeddings"].shape[1]
        == OnnxEncoder(in_model(folder.parent, model_name), "cpu").info.dim
    )
