"""TensorRT pieces: everything that runs without TensorRT here, the rest where it is installed."""

from __future__ import annotations

import importlib.util
import sys
import types
from unittest import mock

import pytest
import torch

from asen import AsenError
from asen.checkpoint import load_checkpoint
from asen.encoders import ModelInfo, TorchEncoder
from export import tensorrt as trt_mod
from export.encoders import TrtEncoder, open_encoder
from export.layout import artifact_path, read_sidecar, write_sidecar
from export.verify import TRT_TOLERANCE, check_parity

TRT_READY = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
needs_trt = pytest.mark.skipif(
    not TRT_READY,
    reason="needs TensorRT 10 and a CUDA GPU "
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
        open_encoder("trt", plan, "cpu")
    with pytest.raises(AsenError, match="no model.plan"):
        open_encoder("trt", repos[2])
    if not TRT_READY:
        write_sidecar(plan, read_sidecar(artifact_path(repos[2], "asen", "onnx")))
        with pytest.raises(AsenError, match="TensorRT needs TensorRT 10 and a CUDA GPU"):
            TrtEncoder(plan)


def test_build_engine_calls_with_a_stand_in(tmp_path, monkeypatch, repos, checkpoints):
    """The builder sequence against a stand-in module (the real API runs in gpu_check.sh):
    one profile for both inputs, FP16 on request, the timing cache read back and saved."""
    fake = mock.MagicMock(__version__="10.13.0.35")
    config = fake.Builder.return_value.create_builder_config.return_value
    config.get_timing_cache.return_value.serialize.return_value = b"cache-bytes"
    fake.Builder.return_value.build_serialized_network.return_value = b"plan-bytes"
    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda: fake)
    monkeypatch.setattr(trt_mod, "current_device", lambda: H100)
    monkeypatch.setenv("ASEN_CACHE", str(tmp_path / "cache"))
    info = ModelInfo.from_checkpoint(load_checkpoint(checkpoints[2]))
    onnx_path = artifact_path(repos[2], "asen", "onnx")
    for fp16 in (False, True):
        meta = trt_mod.build_engine(onnx_path, tmp_path / "model.plan", info, 16, fp16)
    assert (tmp_path / "model.plan").read_bytes() == b"plan-bytes"
    assert meta["precision"] == "fp16" and meta["tensorrt_version"] == "10.13.0.35"
    fake.Builder.return_value.create_network.assert_called_with(0)
    config.set_flag.assert_called_once_with(fake.BuilderFlag.FP16)
    config.clear_flag.assert_called_once_with(fake.BuilderFlag.TF32)
    config.set_memory_pool_limit.assert_called_with(
        fake.MemoryPoolType.WORKSPACE, trt_mod.WORKSPACE_BYTES
    )
    profile = fake.Builder.return_value.create_optimization_profile.return_value
    profile.set_shape.assert_any_call(
        "image", (1, 3, 128, 128), (16, 3, 128, 128), (16, 3, 128, 128)
    )
    profile.set_shape.assert_any_call("attribute", (1,), (16,), (16,))
    assert [c.args[0] for c in config.create_timing_cache.call_args_list] == [b"", b"cache-bytes"]
    fake.init_libnvinfer_plugins.assert_called()


@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engine_parity(tmp_path, repos, checkpoints, precision):
    info = ModelInfo.from_checkpoint(load_checkpoint(checkpoints[2]))
    plan = tmp_path / "model.plan"
    meta = trt_mod.build_engine(
        artifact_path(repos[2], "asen", "onnx"), plan, info, 16, precision == "fp16"
    )
    write_sidecar(plan, meta)
    reference = TorchEncoder.from_checkpoint(checkpoints[2], "cpu")
    print(
        precision, check_parity(reference, TrtEncoder(plan), TRT_TOLERANCE[precision], "TensorRT")
    )
