"""Precision lives in the graph: the fp32 ONNX graph rewritten as mixed FP16 (fp32 inputs and
outputs) or as INT8 with explicit QuantizeLinear/DequantizeLinear pairs, so that ONNX Runtime
runs and checks every precision on a CPU and TensorRT builds each one strongly typed.

Which nodes change precision is decided on the graph's structure, the same way for FP16 and
INT8: the backbone convolutions with what runs between them (ReLU, residual Add, MaxPool),
and the linear layers (Gemm). Everything else stays fp32: the normalisation of the uint8
input, the attention scores and softmax, the attention-weighted pooling, the crop box
arithmetic and RoiAlign, and the final l2-normalisation and fusion.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
from asen.export.layout import PRECISIONS

from asen import AsenError
from asen.atomic import atomic_write_bytes

BACKBONE_WEIGHT = ".backbone."  # initialiser names of the backbone convolutions
BETWEEN_CONVS = {"Relu", "Add", "MaxPool"}  # run in reduced precision when fed by the backbone
LINEAR = "Gemm"


def parse_precisions(values: Iterable[str]) -> list[str]:
    """`--precision` values (repeatable, or comma lists) in canonical order, no repeats."""
    asked = [p.strip().lower() for value in values for p in value.split(",") if p.strip()]
    unknown = [p for p in asked if p not in PRECISIONS]
    if unknown:
        choices = ", ".join(PRECISIONS)
        raise AsenError(f"--precision {unknown[0]}: unknown precision (use {choices})")
    return [p for p in PRECISIONS if p in asked] or ["fp32"]


def reduced_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that run in reduced precision (see the module docstring)."""
    weights = {i.name for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    chosen: set[str] = set()
    backbone_values: set[str] = set()
    for node in model.graph.node:  # topological order
        data_inputs = [i for i in node.input if i and i not in weights]
        is_backbone_conv = node.op_type == "Conv" and any(
            BACKBONE_WEIGHT in i for i in node.input if i in weights
        )
        fed_by_backbone = bool(data_inputs) and all(
            i in backbone_values and i in producer for i in data_inputs
        )
        if is_backbone_conv or (node.op_type in BETWEEN_CONVS and fed_by_backbone):
            backbone_values.update(node.output)
            chosen.add(node.name)
        elif node.op_type == LINEAR:
            chosen.add(node.name)
    if not chosen:
        raise AsenError("the exported graph has no backbone convolutions or linear layers")
    return chosen


def _float_outputs(model: onnx.ModelProto) -> None:
    """Keep the graph outputs fp32. With `keep_io_types`, onnxconverter-common 1.16 still ends
    a graph whose last node stays fp32 (our fusion) with a Cast to fp16 and declares the
    output fp16; that Cast is turned back into fp32 (a no-op), so the contract holds and the
    l2-normalised embedding is never rounded to fp16."""
    producer = {out: node for node in model.graph.node for out in node.output}
    for output in model.graph.output:
        tensor = output.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT16:
            continue
        cast = producer.get(output.name)
        if cast is None or cast.op_type != "Cast":
            raise AsenError(f"FP16 conversion left output {output.name} in fp16")
        for attr in cast.attribute:
            if attr.name == "to":
                attr.i = onnx.TensorProto.FLOAT
        tensor.elem_type = onnx.TensorProto.FLOAT


def _stamp(model: onnx.ModelProto, precision: str) -> None:
    """Record the precision in the graph's own metadata (beside the asen metadata)."""
    props = {p.key: p for p in model.metadata_props}
    if "precision" in props:
        props["precision"].value = precision
    else:
        model.metadata_props.add(key="precision", value=precision)


def _tool(package: str) -> str:
    return f"{package} {version(package)}"


def to_fp16(source: Path, target: Path) -> dict[str, str]:
    """Mixed FP16 with fp32 inputs and outputs (onnxconverter-common's float16 conversion);
    returns the sidecar fields that say how it was made."""
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    keep = reduced_nodes(model)
    blocked = [n.name for n in model.graph.node if n.name not in keep]
    with warnings.catch_warnings():  # weights below fp16's range are clamped: expected
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, node_block_list=blocked
        )
    _float_outputs(converted)
    _stamp(converted, "fp16")
    atomic_write_bytes(target, converted.SerializeToString())
    return {
        "precision": "fp16",
        "converter": _tool("onnxconverter-common"),
        "fp16_nodes": str(len(keep)),
    }


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over preprocessed (image, attribute) batches."""

    def __init__(self, images: np.ndarray, attributes: np.ndarray | None, batch: int = 16):
        """`attributes` None: the all-attributes graph, fed images only."""
        self.feeds = [
            {"image": images[i : i + batch]}
            | ({} if attributes is None else {"attribute": attributes[i : i + batch]})
            for i in range(0, len(images), batch)
        ]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def to_int8(
    source: Path,
    targets: dict[str, Path],
    images: np.ndarray,
    attributes: np.ndarray | None,
) -> dict[str, str]:
    """Static INT8 quantization with Q/DQ nodes, calibrated once (min/max of every quantized
    tensor over the calibration pairs) and written twice: `targets["tensorrt"]` with
    symmetric signed int8 activations (zero point 0) and `targets["cpu"]` with unsigned
    8-bit activations for ONNX Runtime's CPU kernels. Weights: int8, per output channel,
    symmetric. Returns the sidecar fields both graphs share."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(source), load_external_data=False)
    nodes = sorted(reduced_nodes(graph))
    if "attribute" not in {i.name for i in graph.graph.input}:  # the all-attributes graph
        attributes = None
    cache = targets["cpu"].parent / "calibration.json"
    activation = {"tensorrt": QuantType.QInt8, "cpu": QuantType.QUInt8}
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the "please pre-process" advice
    try:
        for engine in ("tensorrt", "cpu"):  # the first call calibrates, the second reuses it
            quantize_static(
                str(source),
                str(targets[engine]),
                CalibrationReader(images, attributes),
                quant_format=QuantFormat.QDQ,
                nodes_to_quantize=nodes,
                per_channel=True,
                activation_type=activation[engine],
                weight_type=QuantType.QInt8,
                extra_options={
                    "WeightSymmetric": True,
                    "ActivationSymmetric": engine == "tensorrt",
                    # linear layers output fp32: the embedding reaches the l2-normalisation
                    # unquantized, and the attention mask its sigmoid
                    "OpTypesToExcludeOutputQuantization": [LINEAR],
                },
                calibration_cache_path=cache,
            )
    finally:
        logging.getLogger().setLevel(quiet)
        cache.unlink(missing_ok=True)
    for target in targets.values():
        model = onnx.load(str(target))
        _stamp(model, "int8")
        atomic_write_bytes(target, model.SerializeToString())
    return {
        "precision": "int8",
        "quantizer": _tool("onnxruntime"),
        "int8_nodes": str(len(nodes)),
        "int8_weights": "int8, per channel, symmetric",
    }


ACTIVATIONS = {
    "tensorrt": "int8, symmetric (zero point 0): TensorRT",
    "cpu": "uint8: ONNX Runtime CPU",
}
