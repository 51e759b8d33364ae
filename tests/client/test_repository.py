"""The generated model repository: every config parsed back with the protobuf and checked
against the ONNX graph; which config `asen serve` picks for which server."""

from __future__ import annotations

import shutil

import onnx
import pytest
from asen.client.server import build_view, plan_models
from asen.export.layout import artifact_path, read_sidecar, write_sidecar
from asen.export.repository import write_repository
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from asen.encoders import ModelInfo

TRITON_TYPE = {"UINT8": "TYPE_UINT8", "INT64": "TYPE_INT64", "FLOAT": "TYPE_FP32"}
PYTRITON = {"python", "ensemble"}  # the backends of the server in the nvidia-pytriton wheel
CONTAINER = {"python", "onnxruntime", "tensorrt", "ensemble"}


def parse(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def graph_io(path) -> dict[str, tuple[str, list[int]]]:
    """name -> (Triton type, dims without the batch) for the graph's inputs and outputs."""
    graph = onnx.load(str(path)).graph
    out = {}
    for v in [*graph.input, *graph.output]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        assert dims[0] == -1  # dynamic batch
        out[v.name] = (TRITON_TYPE[onnx.TensorProto.DataType.Name(t.elem_type)], dims[1:])
    return out


def config_io(tensors, reshaped: bool) -> dict[str, tuple[str, list[int]]]:
    """name -> (type, dims as the model sees them: a reshape applied)."""
    out = {}
    for t in tensors:
        dims = list(t.reshape.shape) if reshaped and t.HasField("reshape") else list(t.dims)
        out[t.name] = (mc.DataType.Name(t.data_type), dims)
    return out


def test_every_config_matches_the_graph(repo) -> None:
    onnx_path = artifact_path(repo, "asen", "onnx")
    graph = graph_io(onnx_path)
    meta = read_sidecar(onnx_path)
    info = ModelInfo.from_metadata(meta)
    params = {**info.to_metadata(), "max_batch": meta["max_batch"]}
    configs = sorted(repo.glob("*/config.pbtxt")) + sorted(repo.glob("*/configs/*.pbtxt"))
    assert [c.relative_to(repo).as_posix() for c in configs] == [
        "asen/config.pbtxt",
        "asen_onnx/config.pbtxt",
        "asen_preprocess/config.pbtxt",
        "asen_onnx/configs/python.pbtxt",
    ]
    for path in configs:
        cfg = parse(path)
        assert cfg.name == (path.parents[1] if path.parent.name == "configs" else path.parent).name
        assert cfg.max_batch_size == int(meta["max_batch"])
        if cfg.platform != "ensemble":
            assert list(cfg.dynamic_batching.preferred_batch_size)
            assert max(cfg.dynamic_batching.preferred_batch_size) <= cfg.max_batch_size
            assert 0 < cfg.dynamic_batching.max_queue_delay_microseconds <= 10_000
            assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    native, python = (
        parse(repo / "asen_onnx/config.pbtxt"),
        parse(repo / "asen_onnx/configs/python.pbtxt"),
    )
    assert (native.platform, native.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert (python.platform, python.backend) == ("", "python")
    for cfg in (native, python):
        assert cfg.name == "asen_onnx"
        assert {**config_io(cfg.input, True), **config_io(cfg.output, True)} == graph
        assert {k: v.string_value for k, v in cfg.parameters.items()} == params
    attribute = next(t for t in native.input if t.name == "attribute")
    assert list(attribute.dims) == [1] and attribute.HasField("reshape")  # [B] in the graph
    assert (repo / "asen_onnx/1/model.py").is_file()

    pre = parse(repo / "asen_preprocess/config.pbtxt")
    assert pre.backend == "python" and (repo / "asen_preprocess/1/model.py").is_file()
    assert config_io(pre.input, True) == {"image_bytes": ("TYPE_STRING", [1])}
    assert config_io(pre.output, True) == {"image": graph["image"]}
    assert pre.parameters["source_size"].string_value == str(info.source_size)

    ens = parse(repo / "asen/config.pbtxt")
    assert ens.platform == "ensemble" and (repo / "asen/1").is_dir()
    assert config_io(ens.input, False) == {
        "image_bytes": ("TYPE_STRING", [1]),
        "attribute": ("TYPE_INT64", [1]),
    }
    assert config_io(ens.output, False) == {"embedding": graph["embedding"]}
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["asen_preprocess", "asen_onnx"]
    assert dict(steps[0].input_map) == {"image_bytes": "image_bytes"}
    assert dict(steps[1].input_map) == {"image": "image", "attribute": "attribute"}
    assert dict(steps[1].output_map) == {"embedding": "embedding"}
    assert ModelInfo.from_metadata({k: v.string_value for k, v in ens.parameters.items()}) == info


@pytest.fixture
def trt_repo(repo, tmp_path):
    """The repository plus a (stand-in) TensorRT plan, configs rewritten as `--trt` would."""
    out = tmp_path / "models"
    shutil.copytree(repo, out)
    plan = artifact_path(out, "asen", "trt")
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"not a real engine")
    write_sidecar(plan, {**read_sidecar(artifact_path(out, "asen", "onnx")), "precision": "fp16"})
    write_repository(out, "asen", trt=True)
    return out


def test_trt_config_and_ensemble_routing(trt_repo) -> None:
    graph = graph_io(artifact_path(trt_repo, "asen", "onnx"))
    cfg = parse(trt_repo / "asen_trt/config.pbtxt")
    assert (cfg.platform, cfg.backend) == ("tensorrt_plan", "tensorrt")
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert {**config_io(cfg.input, True), **config_io(cfg.output, True)} == graph
    assert cfg.parameters["precision"].string_value == "fp16"
    steps = parse(trt_repo / "asen/config.pbtxt").ensemble_scheduling.step
    assert steps[1].model_name == "asen_trt"
    steps = parse(trt_repo / "asen/configs/python.pbtxt").ensemble_scheduling.step
    assert steps[1].model_name == "asen_onnx"


def test_serve_picks_configs_by_server_backends(trt_repo, tmp_path) -> None:
    chosen = {c.model: c for c in plan_models(trt_repo, CONTAINER)}
    assert {m: c.config.relative_to(trt_repo).as_posix() for m, c in chosen.items()} == {
        "asen": "asen/config.pbtxt",
        "asen_onnx": "asen_onnx/config.pbtxt",
        "asen_preprocess": "asen_preprocess/config.pbtxt",
        "asen_trt": "asen_trt/config.pbtxt",
    }
    chosen = {c.model: c for c in plan_models(trt_repo, PYTRITON)}
    assert chosen["asen_trt"].config is None
    assert "no tensorrt backend" in chosen["asen_trt"].how
    assert chosen["asen_onnx"].config == trt_repo / "asen_onnx/configs/python.pbtxt"
    assert chosen["asen_onnx"].how.startswith("ONNX Runtime inside the python backend")
    assert chosen["asen"].config == trt_repo / "asen/configs/python.pbtxt"
    assert chosen["asen"].how == "ensemble: asen_preprocess -> asen_onnx"
    view = build_view(trt_repo, list(chosen.values()), tmp_path / "view")
    assert sorted(p.name for p in view.iterdir()) == ["asen", "asen_onnx", "asen_preprocess"]
    assert parse(view / "asen_onnx/config.pbtxt").backend == "python"
    assert (view / "asen_onnx/1/model.onnx").read_bytes() == artifact_path(
        trt_repo, "asen", "onnx"
    ).read_bytes()
