"""TensorRT engines built from the exported ONNX graphs, strongly typed, on TensorRT 10 and 11.

The precision of every tensor is the one the ONNX graph says (fp32, mixed fp16, or int8 Q/DQ
nodes: `export.precision`); no builder flag asks for a precision. TensorRT 10 builds a
strongly typed network when asked to with the STRONGLY_TYPED creation flag; in TensorRT 11
every network is strongly typed (the flag is deprecated and ignored). `tensorrt_major` is the
one place that tells the two apart, and `network_flags` the one difference in the build.

TensorRT is optional and imported lazily: everything here that does not build or run an
engine (version detection, network flags, profile shapes, sidecar, compatibility checks, the
missing-dependency message) works without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import onnx
import torch
from asen.export.release import TRITON_RELEASE

from asen import AsenError
from asen.atomic import atomic_write_bytes
from asen.model.shape import ModelInfo

WORKSPACE_BYTES = 4 << 30  # builder scratch memory limit
OPT_BATCH = 32  # the batch tactics are tuned for (the throughput benchmark's batch)
SUPPORTED_MAJORS = (10, 11)
INSTALL_HINT = (
    f"for plans that load in asen's Triton release {TRITON_RELEASE.tag} install "
    f"{TRITON_RELEASE.tensorrt_wheel} (its TensorRT {TRITON_RELEASE.tensorrt_version}); "
    "else the tensorrt-cu13 pip package on a CUDA 13 machine, or NVIDIA's TensorRT container"
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
            f"TensorRT needs TensorRT 10 or 11 and a CUDA GPU: {' and '.join(missing)} "
            f"({INSTALL_HINT})"
        )
    tensorrt_major(trt)
    return trt


def tensorrt_major(trt: ModuleType) -> int:
    """The TensorRT major version (10 or 11); any other is one clear error."""
    version = str(getattr(trt, "__version__", "unknown"))
    head = version.split(".")[0]
    major = int(head) if head.isdigit() else -1
    if major not in SUPPORTED_MAJORS:
        raise AsenError(
            f"TensorRT {version} is not supported: asen builds strongly typed engines with "
            f"TensorRT 10 or 11 ({INSTALL_HINT})"
        )
    return major


def network_flags(trt: ModuleType) -> int:
    """`create_network` flags for a strongly typed network: the STRONGLY_TYPED bit on 10.x;
    none on 11.x, where every network is strongly typed and the flag is deprecated."""
    if tensorrt_major(trt) == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


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


def build_engine(
    onnx_path: Path, plan_path: Path, info: ModelInfo, max_batch: int, precision: str
) -> dict[str, str]:
    """Parse the ONNX graph of `precision` (what it holds decides every tensor's type), build
    a strongly typed serialized engine into `plan_path`; returns its sidecar."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AsenError(f"{onnx_path}: TensorRT cannot parse the graph ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    # fp32 tensors stay fp32 (TF32 is a math mode of fp32 layers, not a precision flag)
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    inputs = {i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input}
    for name, (low, opt, high) in profile_shapes(max_batch, info.source_size).items():
        if name in inputs:  # the all-attributes graph has no attribute input
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
    atomic_write_bytes(plan_path, bytes(serialized))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    meta = plan_metadata(info, max_batch, precision, trt.__version__, device)
    return {**meta, "strongly_typed": "true", "source_graph": onnx_path.parent.parent.name}


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
