"""The Triton model repository around an export: `config.pbtxt` files built with the official
`ModelConfig` protobuf (never text templates), and the Python-backend model sources.

For a model exported as `<name>` (model names: `export.layout`):
- `<name>_onnx`, `<name>_onnx_fp16`, `<name>_onnx_int8`: each precision's `model.onnx` on the
  ONNX Runtime backend (CPU instances; for INT8 the graph with unsigned 8-bit activations).
  `configs/python.pbtxt` serves the same file through a Python-backend model that runs ONNX
  Runtime (`1/model.py`), for servers without that backend (the one in `nvidia-pytriton`);
- `<name>_onnx_int8_trt`: the INT8 graph for TensorRT (signed symmetric activations), on the
  GPU where the server has one (instance kind AUTO) and the source of `<name>_trt_int8`;
- `<name>_trt`, `<name>_trt_fp16`, `<name>_trt_int8`: `model.plan` on the TensorRT backend,
  when plans were built (`--trt`);
- `<name>_preprocess`: encoded image bytes -> uint8 [3,S,S] with `asen.data.images.load_image`;
- `<name>` (the first exported precision), `<name>_fp16`, `<name>_int8`: ensembles (image
  bytes, attribute) -> embedding. Each runs its precision's plan when one exists;
  `configs/python.pbtxt` runs its ONNX graph instead.
- the all-attributes graphs (image -> embedding [B, A, D]), when exported, as the same set
  under the name `<name>_all`: `<name>_all_onnx[_fp16|_int8|_int8_trt]`,
  `<name>_all_trt[...]` and the ensembles `<name>_all[_fp16|_int8]` (image bytes ->
  every attribute's embedding), through the same `<name>_preprocess`.

Input and output names, types and dims are read from the ONNX graph itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from asen.export import layout
from asen.export.deployment import DeploymentOptions
from asen.export.warmup import add_warmup, write_warmup_files
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from google.protobuf.text_format import ParseError
from tritonclient.grpc import model_config_pb2 as mc

from asen import AsenError
from asen.atomic import atomic_write_bytes, atomic_write_text
from asen.model.shape import ModelInfo

CONFIG = "config.pbtxt"
VARIANT = "python"  # `configs/python.pbtxt`: the variant for a server with the Python backend only
SOURCES = Path(__file__).parent / "triton_python"  # Python-backend model files
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


_KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}


def instance_kind(default: int, deployment: DeploymentOptions) -> int:
    """The instance kind `--instance-kind` asks for, else the backend's `default`."""
    return _KINDS[deployment.instance_kind] if deployment.instance_kind else default


def _common(
    config: mc.ModelConfig,
    params: dict[str, str],
    kind: int,
    count: int = 1,
    *,
    deployment: DeploymentOptions | None = None,
) -> mc.ModelConfig:
    """Parameters, instance group and dynamic batching (preferred sizes, bounded delay)."""
    deployment = deployment or DeploymentOptions()
    for key, value in params.items():
        config.parameters[key].string_value = value
    config.instance_group.add(kind=kind, count=count)
    if deployment.dynamic_batching:
        batcher = config.dynamic_batching
        batcher.preferred_batch_size.extend(deployment.preferred(config.max_batch_size))
        batcher.max_queue_delay_microseconds = deployment.max_queue_delay_us
        _queue_policy(batcher.default_queue_policy, deployment)
    return _warm(config, deployment)


def _queue_policy(policy: mc.ModelQueuePolicy, deployment: DeploymentOptions) -> None:
    """The dynamic batcher's queue bound and timeout: Triton refuses a request that finds
    the queue full, and one that waits past the timeout (or runs it last: delay)."""
    if not deployment.queue_policy:
        return
    policy.max_queue_size = deployment.max_queue_size or 0  # 0: unbounded
    policy.default_timeout_microseconds = deployment.queue_timeout_us or 0  # 0: none
    policy.timeout_action = (
        mc.ModelQueuePolicy.DELAY
        if deployment.queue_timeout_action == "delay"
        else mc.ModelQueuePolicy.REJECT
    )


def _warm(config: mc.ModelConfig, deployment: DeploymentOptions) -> mc.ModelConfig:
    """`config` with its warmup on a real image (export.warmup), unless --no-warmup."""
    if deployment.warmup:
        add_warmup(config, int(config.parameters["source_size"].string_value))
    return config


def encoder_config(
    name: str,
    backend: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    params: dict[str, str],
    max_batch: int,
    *,
    deployment: DeploymentOptions | None = None,
) -> mc.ModelConfig:
    """The encoder on `onnxruntime`, `tensorrt` or `python` (ONNX Runtime in a Python model),
    run as `deployment` says; every version in its folder is served (the latest answers
    requests that name none)."""
    deployment = deployment or DeploymentOptions()
    config = mc.ModelConfig(name=name, backend=backend, max_batch_size=max_batch)
    config.version_policy.all.SetInParent()
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
    if deployment.threads is not None and backend != "tensorrt":
        params = {**params, "intra_op_thread_count": str(deployment.threads)}
    kind = instance_kind(kind, deployment)
    return _common(config, params, kind, deployment.instances, deployment=deployment)


def preprocess_config(
    name: str, image: Tensor, max_batch: int, deployment: DeploymentOptions | None = None
) -> mc.ModelConfig:
    """Encoded image bytes [B,1] -> the graph's image input [B,3,S,S], in a Python model
    (with the queue policy and warmup of `deployment`; its own instances and batching)."""
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch)
    _add(config.input, Tensor(BYTES_INPUT, mc.TYPE_STRING, (1,)))
    _add(config.output, image)
    params = {"source_size": str(image.dims[-1])}
    deployment = deployment or DeploymentOptions()
    own = DeploymentOptions(
        max_queue_size=deployment.max_queue_size,
        queue_timeout_us=deployment.queue_timeout_us,
        queue_timeout_action=deployment.queue_timeout_action,
        warmup=deployment.warmup,
    )
    kind = mc.ModelInstanceGroup.KIND_CPU
    return _common(config, params, kind, PREPROCESS_INSTANCES, deployment=own)


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
    """`config` as `path`, and the data files of its warmup in the model folder."""
    if config.model_warmup:
        model_dir = path.parent.parent if path.parent.name == "configs" else path.parent
        source_size = int(config.parameters["source_size"].string_value)
        write_warmup_files(model_dir, config, source_size)
    atomic_write_text(path, text_format.MessageToString(config))
    return path


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a `config.pbtxt` with the protobuf; a malformed one is one clear error."""
    try:
        return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
    except (OSError, ParseError, DecodeError) as e:
        raise AsenError(f"{path}: not a readable Triton model config ({e})") from None


def _install_source(source: str, model_dir: Path) -> Path:
    target = model_dir / layout.VERSION / "model.py"
    atomic_write_bytes(target, (SOURCES / source).read_bytes())
    return target


@dataclass(frozen=True)
class _Graph:
    """An exported graph as the configs need it: tensors, parameters, largest batch."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    params: dict[str, str]
    max_batch: int

    @classmethod
    def read(cls, artifact: Path, graph: Path | None = None) -> _Graph:
        """The artifact's sidecar and the tensors of `graph` (default: the artifact itself;
        a plan's are those of the ONNX graph it was built from)."""
        meta = layout.read_sidecar(artifact)
        info = ModelInfo.from_metadata(meta, str(artifact))
        max_batch = int(meta["max_batch"])
        params = info.to_metadata(max_batch)
        if artifact.suffix == ".plan" or meta.get("precision", "fp32") != "fp32":
            params["precision"] = meta.get("precision", "fp32")
        if meta.get("graph") == "all":  # the all-attributes graph (image -> [B, A, D])
            params["graph"] = "all"
        onnx_path = graph or artifact
        inputs, outputs = graph_tensors(onnx_path)
        if not any(t.name == IMAGE for t in inputs):
            raise AsenError(f"{onnx_path}: the graph has no `{IMAGE}` input")
        return cls(inputs, outputs, params, max_batch)


def _encoder_files(repo: Path, model: str, kind: int, deployment: DeploymentOptions) -> list[Path]:
    """`<model>/config.pbtxt` (ONNX Runtime backend), `configs/python.pbtxt` (ONNX Runtime in
    a Python model) and its `model.py`, around `<model>/1/model.onnx`."""
    graph = _Graph.read(layout.in_model(repo, model))
    args = (graph.inputs, graph.outputs, graph.params, graph.max_batch)
    native = encoder_config(model, "onnxruntime", *args, deployment=deployment)
    python = encoder_config(model, "python", *args, deployment=deployment)
    for config in (native, python):
        config.instance_group[0].kind = instance_kind(kind, deployment)
    return [
        write_config(repo / model / CONFIG, native),
        write_config(repo / model / f"configs/{VARIANT}.pbtxt", python),
        _install_source("onnx_runtime.py", repo / model),
    ]


def _ensemble_files(
    repo: Path,
    ensemble: str,
    pre: str,
    onnx_model: str,
    plan_model: str | None,
    *,
    deployment: DeploymentOptions,
):
    """The ensemble `ensemble`: image bytes -> `pre` -> the plan (when built; the ONNX graph
    in `configs/python.pbtxt`) or the ONNX graph."""
    (repo / ensemble / layout.VERSION).mkdir(parents=True, exist_ok=True)  # ensembles need one
    graph = _Graph.read(layout.in_model(repo, onnx_model))
    args = (graph.inputs, graph.outputs, graph.params, graph.max_batch)
    onnx_ensemble = ensemble_config(ensemble, pre, onnx_model, *args)
    if plan_model is None:
        return [write_config(repo / ensemble / CONFIG, onnx_ensemble)]
    plan = _Graph.read(layout.in_model(repo, plan_model, "trt"), layout.in_model(repo, onnx_model))
    batch = min(graph.max_batch, plan.max_batch)
    params = {**graph.params, "max_batch": str(batch)}
    trt = ensemble_config(ensemble, pre, plan_model, graph.inputs, graph.outputs, params, batch)
    plan_config = encoder_config(
        plan_model,
        "tensorrt",
        plan.inputs,
        plan.outputs,
        plan.params,
        plan.max_batch,
        deployment=deployment,
    )
    return [
        write_config(repo / plan_model / CONFIG, plan_config),
        write_config(repo / ensemble / CONFIG, trt),
        write_config(repo / ensemble / f"configs/{VARIANT}.pbtxt", onnx_ensemble),
    ]


def exported_precisions(repo: Path, name: str) -> list[str]:
    """The precisions whose ONNX graph `<repo>` holds for model `name`, in canonical order."""
    return [
        p for p in layout.PRECISIONS if layout.in_model(repo, layout.onnx_model(name, p)).is_file()
    ]


def write_repository(
    repo: str | Path,
    name: str = "asen",
    trt: bool = False,
    *,
    precisions: list[str] | None = None,
    deployment: DeploymentOptions | None = None,
) -> list[Path]:
    """Write the configs (and Python model files) around the exported graphs of `name` in
    `repo`: per precision its ONNX model(s) and, with `trt`, its plan model, then an ensemble
    (`<name>` for the first precision, `<name>_fp16` / `<name>_int8` for the others), and the
    shared preprocessing model; the encoder models run as `deployment` says. Returns the
    files written."""
    repo, deployment = Path(repo), deployment or DeploymentOptions()
    precisions = precisions or exported_precisions(repo, name)
    if not precisions:
        path = layout.artifact_path(repo, name, "onnx")
        raise AsenError(f"{path}: no exported graph of model {name} in {repo}")
    first = _Graph.read(layout.in_model(repo, layout.onnx_model(name, precisions[0])))
    image = next(t for t in first.inputs if t.name == IMAGE)
    pre = f"{name}_preprocess"
    written = [
        write_config(
            repo / pre / CONFIG, preprocess_config(pre, image, first.max_batch, deployment)
        ),
        _install_source("preprocess.py", repo / pre),
    ]
    for base in (name, layout.all_name(name)):  # the pair graphs, then the all-attributes ones
        for precision in precisions:
            if base == name or layout.in_model(repo, layout.onnx_model(base, precision)).is_file():
                first = precision == precisions[0]
                written += _precision_files(repo, base, precision, pre, trt, first, deployment)
    return written


def _precision_files(
    repo: Path,
    name: str,
    precision: str,
    pre: str,
    trt: bool,
    first: bool,
    deployment: DeploymentOptions,
) -> list[Path]:
    """One precision of export `name`: its ONNX model(s), plan model and ensemble."""
    cpu, auto = mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_AUTO
    onnx_model = layout.onnx_model(name, precision)
    written = _encoder_files(repo, onnx_model, cpu, deployment)
    if precision == "int8":  # TensorRT's graph: ONNX Runtime on the GPU where there is one
        int8_trt = layout.onnx_model(name, precision, tensorrt=True)
        written += _encoder_files(repo, int8_trt, auto, deployment)
    plan = layout.plan_model(name, precision) if trt else None
    ensemble = layout.ensemble_model(name, precision, first=first)
    written += _ensemble_files(repo, ensemble, pre, onnx_model, plan, deployment=deployment)
    return written
