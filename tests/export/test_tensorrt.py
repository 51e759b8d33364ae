"""TensorRT pieces: everything that runs without TensorRT here, the rest where it is installed."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
from asen.export import tensorrt as trt_mod
from asen.export.encoders import TrtEncoder
from asen.export.layout import artifact_path, in_model, read_sidecar, write_sidecar
from asen.export.verify import TRT_TOLERANCE, check_parity

from asen import AsenError
from asen.backends import open_encoder
from asen.checkpoint import load_checkpoint
from asen.encoders import ModelInfo, TorchEncoder

TRT_READY = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
needs_trt = pytest.mark.skipif(
    not TRT_READY,
    reason="needs TensorRT 10 or 11 and a CUDA GPU "
    "(pip install tensorrt-cu13, or NVIDIA's TensorRT container)",
)
H100 = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_profile_shapes():
    shapes = trt_mod.profile_shapes(64, 128)
    assert shapes["image"] == ((1, 3, 128, 128), (32, 3, 128, 128), (64, 3, 128, 128))
    assert shapes["attribute"] == ((1,), (32,), (64,))
    assert trt_mod.profile_shapes(8, 448)["attribute"] == ((1,), (8,), (8,))
    assert trt_mod.profile_shapes(1, 448)["image"] == ((1, 3, 448, 448),) * 3


@pytest.mark.parametrize(
    "have_trt, have_gpu, expected",
    [
        (False, True, "TensorRT is not installed ("),
        (True, False, ": no CUDA GPU is visible ("),
        (False, False, "TensorRT is not installed and no CUDA GPU is visible"),
    ],
)
def test_require_tensorrt_says_what_is_missing(monkeypatch, have_trt, have_gpu, expected):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt") if have_trt else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: have_gpu)
    with pytest.raises(AsenError) as e:
        trt_mod.require_tensorrt()
    assert expected in str(e.value)
    assert "tensorrt-cu13" in str(e.value) and "\n" not in str(e.value)


def test_sidecar_round_trip_and_compatibility(tmp_path, checkpoints):
    info = ModelInfo.from_checkpoint(load_checkpoint(checkpoints[2]))
    meta = trt_mod.plan_metadata(info, 16, "fp16", "10.13.0.35", H100)
    plan = tmp_path / "model.plan"
    write_sidecar(plan, meta)
    back = read_sidecar(plan)
    assert back == meta and ModelInfo.from_metadata(back) == info
    assert back["max_batch"] == "16" and back["precision"] == "fp16"
    trt_mod.check_compatible(back, "10.13.0.35", H100, str(plan))
    with pytest.raises(
        AsenError, match=r"built with TensorRT 10.13.0.35, this is TensorRT 10.9.0.34; rebuild"
    ):
        trt_mod.check_compatible(back, "10.9.0.34", H100, str(plan))
    other = {"gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    with pytest.raises(
        AsenError,
        match=r"built for NVIDIA H100 80GB HBM3 \(compute capability 9.0\), "
        r"this GPU is NVIDIA L4 \(compute capability 8.9\)",
    ):
        trt_mod.check_compatible(back, "10.13.0.35", other, str(plan))


def test_timing_cache_path_is_per_version_and_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("ASEN_CACHE", str(tmp_path))
    assert (
        trt_mod.timing_cache_path("10.13.0.35", H100)
        == tmp_path / "tensorrt-10.13.0.35-sm90.timing-cache"
    )


def test_trt_encoder_errors(tmp_path, repos):
    plan = tmp_path / "asen_trt" / "1" / "model.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"not a plan")
    with pytest.raises(AsenError, match="sidecar missing"):
        TrtEncoder(plan)
    with pytest.raises(AsenError, match="--device cpu is not possible"):
        open_encoder("trt", str(plan), device="cpu")
    with pytest.raises(AsenError, match="no model.plan"):
        open_encoder("trt", str(repos[2]))
    if not TRT_READY:
        write_sidecar(plan, read_sidecar(artifact_path(repos[2], "asen", "onnx")))
        with pytest.raises(AsenError, match="TensorRT needs TensorRT 10 or 11 and a CUDA GPU"):
            TrtEncoder(plan)


class _Flags:
    """An enum surface that has exactly the members given (an attribute it lacks raises,
    as on the real module: TensorRT 11 has no BuilderFlag.FP16 or BuilderFlag.INT8)."""

    def __init__(self, **members: int):
        self.__dict__.update(members)


def stand_in(version: str) -> mock.MagicMock:
    """The parts of the `tensorrt` module that `build_engine` uses, as 10.x or 11.x has them
    (NVIDIA's Python API reference and the 10.x -> 11.x migration guide)."""
    fake = mock.MagicMock(__version__=version)
    major = int(version.split(".")[0])
    if major == 10:
        fake.NetworkDefinitionCreationFlag = _Flags(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
        fake.BuilderFlag = _Flags(FP16=0, INT8=2, TF32=6, OBEY_PRECISION_CONSTRAINTS=12)
    else:  # 11.x: weak typing removed; STRONGLY_TYPED kept only for compatibility, ignored
        fake.NetworkDefinitionCreationFlag = _Flags(STRONGLY_TYPED=0, PREFER_AOT_PYTHON_PLUGINS=1)
        fake.BuilderFlag = _Flags(TF32=6, REFIT=3)
    builder = fake.Builder.return_value
    config = builder.create_builder_config.return_value
    config.get_timing_cache.return_value.serialize.return_value = b"cache"
    builder.build_serialized_network.return_value = b"plan-bytes"
    return fake


@pytest.mark.parametrize(
    "version, major, flags",
    [("10.13.0.35", 10, 1 << 1), ("10.0.1.6", 10, 1 << 1), ("11.4.0.9", 11, 0)],
)
def test_version_detection_and_strongly_typed_flags(version, major, flags):
    fake = stand_in(version)
    assert trt_mod.tensorrt_major(fake) == major
    assert trt_mod.network_flags(fake) == flags


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0.1", "12.0.0", "unknown"])
def test_other_versions_are_one_line(version):
    with pytest.raises(AsenError) as e:
        trt_mod.tensorrt_major(types.SimpleNamespace(__version__=version))
    assert f"TensorRT {version} is not supported" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("version", ["10.13.0.35", "11.4.0.9"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_engine_is_strongly_typed_with_no_precision_flags(
    tmp_path, monkeypatch, repos, checkpoints, version, precision
):
    """One code path for 10.x and 11.x: the network is strongly typed (the flag on 10.x, the
    default on 11.x), no builder flag asks for a precision, one profile for both inputs, the
    timing cache read back and saved, the plan written."""
    fake = stand_in(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trt_mod, "current_device", lambda: H100)
    monkeypatch.setenv("ASEN_CACHE", str(tmp_path / "cache"))
    info = ModelInfo.from_checkpoint(load_checkpoint(checkpoints[2]))
    onnx_path = artifact_path(repos[2], "asen", "onnx")
    for _ in range(2):  # the second build reads the first one's timing cache
        meta = trt_mod.build_engine(onnx_path, tmp_path / "model.plan", info, 16, precision)
    assert (tmp_path / "model.plan").read_bytes() == b"plan-bytes"
    assert meta["precision"] == precision and meta["tensorrt_version"] == version
    assert meta["strongly_typed"] == "true" and meta["source_graph"] == "asen_onnx"
    builder = fake.Builder.return_value
    builder.create_network.assert_called_with(trt_mod.network_flags(fake))
    config = builder.create_builder_config.return_value
    config.set_flag.assert_not_called()  # no precision (or any other) builder flag is set
    config.clear_flag.assert_called_with(fake.BuilderFlag.TF32)
    config.set_memory_pool_limit.assert_called_with(
        fake.MemoryPoolType.WORKSPACE, trt_mod.WORKSPACE_BYTES
    )
    profile = builder.create_optimization_profile.return_value
    profile.set_shape.assert_any_call(
        "image", (1, 3, 128, 128), (16, 3, 128, 128), (16, 3, 128, 128)
    )
    profile.set_shape.assert_any_call("attribute", (1,), (16,), (16,))
    assert [c.args[0] for c in config.create_timing_cache.call_args_list] == [b"", b"cache"]
    fake.init_libnvinfer_plugins.assert_called()


def test_no_weak_typing_api_anywhere():
    """grep: no precision builder flag, no INT8 calibrator in the project's code."""
    root = Path(__file__).parents[2]
    banned = [
        "BuilderFlag." + "FP16",
        "BuilderFlag." + "INT8",
        "Calib" + "rator",
        "calib" + "rator",
    ]
    files = [
        p
        for folder in ("asen", "export", "client", "benchmarks", "studies", "scripts")
        for p in (root / folder).rglob("*")
        if p.suffix in (".py", ".sh")
    ]
    hits = [f"{p}: {b}" for p in files for b in banned if b in p.read_text()]
    assert not hits


@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_parity(tmp_path, precision_repo, checkpoints, precision):
    info = ModelInfo.from_checkpoint(load_checkpoint(checkpoints[2]))
    graph = {"fp32": "asen_onnx", "fp16": "asen_onnx_fp16", "int8": "asen_onnx_int8_trt"}
    plan = tmp_path / "model.plan"
    meta = trt_mod.build_engine(
        in_model(precision_repo, graph[precision]), plan, info, 16, precision
    )
    write_sidecar(plan, meta)
    reference = TorchEncoder.from_checkpoint(checkpoints[2], "cpu")
    print(
        precision, check_parity(reference, TrtEncoder(plan), TRT_TOLERANCE[precision], "TensorRT")
    )
