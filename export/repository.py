"""The Triton model repository around an export: `config.pbtxt` files built with the official
`ModelConfig` protobuf (never text templates), and the Python-backend model sources.

For a model exported as `<name>`:
- `<name>_onnx`: `model.onnx` on the ONNX Runtime backend. `configs/python.pbtxt` serves the
  same file through a Python-backend model that runs ONNX Runtime (`1/model.py`), for servers
  without that backend (the one in the `nvidia-pytriton` wheel);
- `<name>_trt`: `model.plan` on the TensorRT backend, when a plan was built;
- `<name>_preprocess`: encoded image bytes -> uint8 [3,S,S] with `asen.data.images.load_image`;
- `<name>`: the ensemble (image bytes, attribute) -> embedding. It runs `<name>_trt` when a
  plan exists; `configs/python.pbtxt` runs `<name>_onnx` instead.

Input and output names, types and dims are read from the ONNX graph itself.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from google.protobuf.text_format import ParseError
from tritonclient.grpc import model_config_pb2 as mc

from asen import AsenError
from asen.encoders import ModelInfo
from export import layout

CONFIG = "config.pbtxt"
VARIANT = "python"  # `configs/python.pbtxt`: the variant for a server with the Python backend only
SOURCES = Path(__file__).parent / "triton_python"  # Python-backend model files
PREFERRED_BATCH = (8, 16, 32)
MAX_QUEUE_DELAY_US = 2000
PREPROCESS_INSTANCES = 2
BYTES_INPUT, IMAGE = "image_bytes", "image"
BACKEND_OF = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}

_TYPES = {
    onnx.TensorProto.UINT8: mc.TYPE_UINT8,
    onnx.TensorProto.INT8: mc.TYPE_INT8,
    onnx.TensorProto.INT32: mc.TYPE_INT32,
    onnx.TensorProto.INT64: mc.TYPE_INT64,
    onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
    onnx.TensorProto.BOOL: mc.TYPE_BOOL,
}


@dataclass(frozen=True)
class Tensor:
    """A graph input or output as Triton sees it: dims exclude the batch dimension."""

    name: str
    data_type: int  # model_config_pb2.DataType
    dims: tuple[int, ...]


def graph_tensors(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs and outputs of an ONNX graph whose first dimension is the dynamic batch."""
    model = onnx.load(str(path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}

    def tensor(value: onnx.ValueInfoProto) -> Tensor:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims or dims[0] != -1 or t.elem_type not in _TYPES:
            raise AsenError(f"{path}: tensor {value.name} is not a batched tensor Triton can serve")
        return Tensor(value.name, _TYPES[t.elem_type], tuple(dims[1:]))

    inputs = [tensor(v) for v in model.graph.input if v.name not in weights]
    return inputs, [tensor(v) for v in model.graph.output]


def _add(field, tensor: Tensor, reshape: bool = True) -> None:
    """A config input/output. A tensor that is only the batch dimension ([B]) is declared as
    dims [1], reshaped to [] for the model that runs it (an ensemble keeps [1])."""
    entry = field.add(name=tensor.name, data_type=tensor.data_type, dims=list(tensor.dims) or [1])
    if reshape and not tensor.dims:
        entry.reshape.SetInParent()


def _common(
    config: mc.ModelConfig, params: dict[str, str], kind: int, count: int = 1
) -> mc.ModelConfig:
    """Parameters, instance group and dynamic batching (preferred sizes, bounded delay)."""
    for key, value in params.items():
        config.parameters[key].string_value = value
    config.instance_group.add(kind=kind, count=count)
    batcher = config.dynamic_batching
    batcher.preferred_batch_size.extend(
        sorted({b for b in PREFERRED_BATCH if b <= config.max_batch_size})
    )
    batcher.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    return config


def encoder_config(
    name: str,
    backend: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    params: dict[str, str],
    max_batch: int,
) -> mc.ModelConfig:
    """The encoder on `onnxruntime`, `tensorrt` or `python` (ONNX Runtime in a Python model)."""
    config = mc.ModelConfig(name=name, backend=backend, max_batch_size=max_batch)
    platform = {v: k for k, v in BACKEND_OF.items()}.get(backend)
    if platform:
        config.platform = platform
    for t in inputs:
        _add(config.input, t)
    for t in outputs:
        _add(config.output, t)
    kind = (
        mc.ModelInstanceGroup.KIND_GPU if backend == "tensorrt" else mc.ModelInstanceGroup.KIND_CPU
    )
    return _common(config, params, kind)


def preprocess_config(name: str, image: Tensor, max_batch: int) -> mc.ModelConfig:
    """Encoded image bytes [B,1] -> the graph's image input [B,3,S,S], in a Python model."""
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch)
    _add(config.input, Tensor(BYTES_INPUT, mc.TYPE_STRING, (1,)))
    _add(config.output, image)
    params = {"source_size": str(image.dims[-1])}
    return _common(config, params, mc.ModelInstanceGroup.KIND_CPU, PREPROCESS_INSTANCES)


def ensemble_config(
    name: str,
    preprocess: str,
    encoder: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    params: dict[str, str],
    max_batch: int,
) -> mc.ModelConfig:
    """(image bytes, the graph's other inputs) -> the graph's outputs: preprocess, then encode."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch)
    _add(config.input, Tensor(BYTES_INPUT, mc.TYPE_STRING, (1,)))
    for t in inputs:
        if t.name != IMAGE:
            _add(config.input, t, reshape=False)
    for t in outputs:
        _add(config.output, t, reshape=False)
    for key, value in params.items():
        config.parameters[key].string_value = value
    steps = config.ensemble_scheduling.step
    steps.add(
        model_name=preprocess,
        model_version=-1,
        input_map={BYTES_INPUT: BYTES_INPUT},
        output_map={IMAGE: IMAGE},
    )
    steps.add(
        model_name=encoder,
        model_version=-1,
        input_map={t.name: t.name for t in inputs},
        output_map={t.name: t.name for t in outputs},
    )
    return config


def write_config(path: Path, config: mc.ModelConfig) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(config))
    return path


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a `config.pbtxt` with the protobuf; a malformed one is one clear error."""
    try:
        return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
    except (OSError, ParseError, DecodeError) as e:
        raise AsenError(f"{path}: not a readable Triton model config ({e})") from None


def _install_source(source: str, model_dir: Path) -> Path:
    target = model_dir / layout.VERSION / "model.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCES / source, target)
    return target


def write_repository(repo: str | Path, name: str = "asen", trt: bool = False) -> list[Path]:
    """Write the configs (and Python model files) around `<repo>/<name>_onnx/1/model.onnx` and,
    with `trt`, `<repo>/<name>_trt/1/model.plan`. Returns the files written."""
    repo = Path(repo)
    onnx_path = layout.artifact_path(repo, name, "onnx")
    meta = layout.read_sidecar(onnx_path)
    info = ModelInfo.from_metadata(meta, str(onnx_path))
    max_batch = int(meta["max_batch"])
    params = info.to_metadata(max_batch)
    inputs, outputs = graph_tensors(onnx_path)
    image = next((t for t in inputs if t.name == IMAGE), None)
    if image is None:
        raise AsenError(f"{onnx_path}: the graph has no `{IMAGE}` input")
    onnx_dir, trt_dir = layout.model_dir(repo, name, "onnx"), layout.model_dir(repo, name, "trt")
    pre, variant = f"{name}_preprocess", f"configs/{VARIANT}.pbtxt"
    native = encoder_config(onnx_dir.name, "onnxruntime", inputs, outputs, params, max_batch)
    python = encoder_config(onnx_dir.name, "python", inputs, outputs, params, max_batch)
    written = [
        write_config(onnx_dir / CONFIG, native),
        write_config(onnx_dir / variant, python),
        _install_source("onnx_runtime.py", onnx_dir),
        write_config(repo / pre / CONFIG, preprocess_config(pre, image, max_batch)),
        _install_source("preprocess.py", repo / pre),
    ]
    (repo / name / layout.VERSION).mkdir(parents=True, exist_ok=True)  # ensembles need one
    onnx_ensemble = ensemble_config(name, pre, onnx_dir.name, inputs, outputs, params, max_batch)
    if trt:
        plan_meta = layout.read_sidecar(layout.artifact_path(repo, name, "trt"))
        trt_batch = int(plan_meta.get("max_batch", max_batch))
        trt_params = {**params, "max_batch": str(trt_batch)}
        if "precision" in plan_meta:
            trt_params["precision"] = plan_meta["precision"]
        plan = encoder_config(trt_dir.name, "tensorrt", inputs, outputs, trt_params, trt_batch)
        written.append(write_config(trt_dir / CONFIG, plan))
        batch = min(max_batch, trt_batch)
        batch_params = {**params, "max_batch": str(batch)}
        trt_ensemble = ensemble_config(
            name, pre, trt_dir.name, inputs, outputs, batch_params, batch
        )
        written.append(write_config(repo / name / CONFIG, trt_ensemble))
        written.append(write_config(repo / name / variant, onnx_ensemble))
    else:
        (repo / name / variant).unlink(missing_ok=True)
        written.append(write_config(repo / name / CONFIG, onnx_ensemble))
    return written
