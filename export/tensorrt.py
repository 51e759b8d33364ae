"""TensorRT 10 engines built from the exported ONNX graph.

TensorRT is optional and imported lazily: everything here that does not build or run an
engine (profile shapes, sidecar, compatibility checks, the missing-dependency message)
works without it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import ModuleType

import torch

from asen import AsenError
from asen.encoders import ModelInfo

WORKSPACE_BYTES = 4 << 30  # builder scratch memory limit
OPT_BATCH = 32  # the batch tactics are tuned for (the throughput benchmark's batch)
INSTALL_HINT = (
    "install the tensorrt-cu13 pip package on a CUDA 13 machine, or run inside "
    "NVIDIA's TensorRT or Triton container"
)


def require_tensorrt() -> ModuleType:
    """The `tensorrt` module, or one error line naming what is missing (TensorRT, a CUDA
    GPU, or both) and how to get it."""
    missing, trt = [], None
    try:
        import tensorrt as trt
    except (ImportError, OSError):
        missing.append("TensorRT is not installed")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible")
    if missing:
        raise AsenError(
            f"TensorRT needs TensorRT 10 and a CUDA GPU: {' and '.join(missing)} ({INSTALL_HINT})"
        )
    return trt


def profile_shapes(max_batch: int, source_size: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of each input for the one optimisation profile."""
    s = source_size
    batches = (1, min(OPT_BATCH, max_batch), max_batch)
    return {
        "image": tuple((b, 3, s, s) for b in batches),
        "attribute": tuple((b,) for b in batches),
    }


def current_device() -> dict[str, str]:
    """Name and compute capability of the current CUDA GPU."""
    major, minor = torch.cuda.get_device_capability()
    return {"gpu_name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def plan_metadata(
    info: ModelInfo, max_batch: int, precision: str, tensorrt_version: str, device: dict[str, str]
) -> dict[str, str]:
    """The sidecar of a plan: the model's metadata plus what the plan was built for."""
    return {
        **info.to_metadata(max_batch),
        "precision": precision,
        "tensorrt_version": tensorrt_version,
        **device,
    }


def check_compatible(
    meta: dict[str, str], tensorrt_version: str, device: dict[str, str], source: str
) -> None:
    """A plan runs only on the TensorRT version and GPU it was built for; say so clearly."""
    rebuild = "rebuild it here with `asen export --trt`"
    built = meta.get("tensorrt_version")
    if built != tensorrt_version:
        raise AsenError(
            f"{source}: built with TensorRT {built}, this is TensorRT {tensorrt_version}; {rebuild}"
        )
    was = (meta.get("gpu_name"), meta.get("compute_capability"))
    now = (device["gpu_name"], device["compute_capability"])
    if was != now:
        raise AsenError(
            f"{source}: built for {was[0]} (compute capability {was[1]}), this GPU "
            f"is {now[0]} (compute capability {now[1]}); {rebuild}"
        )


def timing_cache_path(tensorrt_version: str, device: dict[str, str]) -> Path:
    """Per TensorRT version and GPU, shared by every build (`$ASEN_CACHE`, else ~/.cache/asen)."""
    root = Path(os.environ.get("ASEN_CACHE", Path.home() / ".cache" / "asen"))
    sm = device["compute_capability"].replace(".", "")
    return root / f"tensorrt-{tensorrt_version}-sm{sm}.timing-cache"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_engine(
    onnx_path: Path, plan_path: Path, info: ModelInfo, max_batch: int, fp16: bool
) -> dict[str, str]:
    """Parse the ONNX graph, build a serialized engine into `plan_path`; returns its sidecar."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AsenError(f"{onnx_path}: TensorRT cannot parse the graph ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: parity with PyTorch on CPU
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(max_batch, info.source_size).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    device = current_device()
    cache_path = timing_cache_path(trt.__version__, device)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if cache is None:  # an unreadable cache file: start a fresh one (overwritten below)
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise AsenError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    plan_path.write_bytes(bytes(serialized))
    _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return plan_metadata(info, max_batch, "fp16" if fp16 else "fp32", trt.__version__, device)


def load_engine(plan_path: Path, meta: dict[str, str]):
    """Deserialize a plan after checking it was built for this TensorRT and GPU."""
    trt = require_tensorrt()
    check_compatible(meta, trt.__version__, current_device(), str(plan_path))
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise AsenError(f"{plan_path}: TensorRT cannot deserialize this plan (corrupt file?)")
    return engine
