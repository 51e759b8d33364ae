"""The model's inference function as one ONNX graph (docs/architecture.md, "Exported graph"),
and ONNX Runtime sessions to run it.

Exporter: `torch.onnx.export(dynamo=True)` at opset 18. It translates torchvision's
`roi_align(aligned=True)` to the standard RoiAlign with `half_pixel` coordinates (opset
>= 16), folds batch norms, and writes no control flow; opset 18 is inside the range the
TensorRT 10 ONNX parser reads (9 to 20).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from asen import AsenError
from asen.encoders import ModelInfo

OPSET = 18
INPUTS, OUTPUT = ("image", "attribute"), "embedding"
ALL_INPUTS = ("image",)  # the all-attributes graph: image -> embedding [B, A, D]
GRAPH_KEY = "graph"  # metadata key: "all" on the all-attributes graph (absent: the pair graph)
SAMPLE_BATCH = 2  # batch of the example inputs traced at export (the graph's batch is dynamic)


class AllAttributes(torch.nn.Module):
    """The model's all-attributes function (`ASENPP.forward_all`) as a module to export."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.forward_all(image)


def export_onnx(
    model: torch.nn.Module, info: ModelInfo, path: Path, max_batch: int, *, graph: str = "pair"
) -> None:
    """Write `model`'s inference forward to `path` as one checked ONNX graph with metadata;
    `graph="all"`: its all-attributes function (image -> [B, A, D])."""
    model = model.eval().cpu()
    s = info.source_size
    batch = torch.export.Dim("batch", min=1)
    image = torch.zeros((SAMPLE_BATCH, 3, s, s), dtype=torch.uint8)
    if graph == "all":
        model, inputs, example = AllAttributes(model).eval(), ALL_INPUTS, (image,)
        dynamic: dict = {"image": {0: batch}}
    else:
        inputs, example = INPUTS, (image, torch.zeros(SAMPLE_BATCH, dtype=torch.int64))
        dynamic = {"image": {0: batch}, "attribute": {0: batch}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            verbose=False,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=[OUTPUT],
            dynamic_shapes=dynamic,
        )
    nodes = program.model.graph
    outputs = {id(v) for v in nodes.outputs}
    for node in nodes:
        node.metadata_props.clear()  # the exporter's per-node stack traces and FX names
        for value in node.outputs:
            # aten.embedding's result is named `embedding`, which would shadow the output
            if value.name in (*INPUTS, OUTPUT) and id(value) not in outputs:
                value.name = f"{value.name}_inner"
    extra = {GRAPH_KEY: "all"} if graph == "all" else {}
    program.model.metadata_props.update({**info.to_metadata(max_batch), **extra})
    program.save(path)  # initialisers inline unless the model is over 2 GB
    check_onnx(path, info)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_onnx(path: Path, info: ModelInfo) -> None:
    """onnx.checker with full (strict) shape inference, then the contract's inputs/outputs."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.shape_inference.infer_shapes(
            onnx.load(str(path), load_external_data=False),
            check_type=True,
            strict_mode=True,
            data_prop=True,
        )
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise AsenError(
            f"{path}: exported graph fails onnx.checker ({e})".replace("\n", " ")
        ) from e
    s, t = info.source_size, onnx.TensorProto
    got = {
        v.name: (v.type.tensor_type.elem_type, _dims(v))
        for v in [*model.graph.input, *model.graph.output]
    }
    batch = _dims(model.graph.input[0])[0]
    want = {
        "image": (t.UINT8, [batch, 3, s, s]),
        "attribute": (t.INT64, [batch]),
        "embedding": (t.FLOAT, [batch, info.dim]),
    }
    if {p.key: p.value for p in model.metadata_props}.get(GRAPH_KEY) == "all":
        del want["attribute"]
        want["embedding"] = (t.FLOAT, [batch, len(info.attributes), info.dim])
    if got != want or not isinstance(batch, str):
        raise AsenError(f"{path}: graph inputs/outputs {got} differ from the contract {want}")


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthreads do not speed up convolutions)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, allowed or 1)
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            cores.add((phys, value.strip()))
    return max(1, min(len(cores) or allowed or 1, allowed or 1))


def providers_for(device: str) -> list[str]:
    """CUDA when asked for or (auto) when this onnxruntime has it and a GPU is present."""
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and not has_cuda:
        raise AsenError(
            f"--device {device}: this onnxruntime has no CUDAExecutionProvider "
            "(install onnxruntime-gpu on a CUDA machine)"
        )
    if device != "auto" and not device.startswith("cuda"):
        raise AsenError(f"--device {device}: expected auto, cpu or cuda")
    if has_cuda and (device != "auto" or torch.cuda.is_available()):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: Path, device: str = "auto") -> ort.InferenceSession:
    """An ONNX Runtime session tuned for speed: all graph optimisations, one intra-op
    thread per physical core."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = physical_cores()
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), opts, providers=providers_for(device))
    except AsenError:
        raise
    except Exception as e:  # noqa: BLE001 - any unloadable file is one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AsenError(f"{path}: not a loadable ONNX model ({reason})") from e
