"""Warmup of the served models: Triton runs each model on a real image before it reports the
model ready, so the first request costs what a steady one does (ONNX Runtime's and
TensorRT's first run allocates and picks kernels; the Python models import on first use).

The image is a synthetic garment rendered at the model's size S and encoded as PNG, the kind
of file clients send: models taking the image tensor get it through the one preprocessing
function (uint8 [3, S, S]), models taking encoded bytes get the PNG file. Other inputs (the
attribute id) are zeros. The files live in `<model>/warmup/`, beside `config.pbtxt`.
"""

from __future__ import annotations

import functools
import io
import struct
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from asen.atomic import atomic_write_bytes
from asen.data.images import load_image
from asen.data.synthetic import DEFAULT_ATTRIBUTES, render

WARMUP_DIR = "warmup"
SAMPLE = "real_image"
RUNS = 2  # the first run allocates, the second meets what a steady request meets
IMAGE_FILE, BYTES_FILE = "image", "image_bytes"


@functools.lru_cache(maxsize=4)
def warmup_png(source_size: int) -> bytes:
    """A synthetic garment of S x S pixels, encoded as PNG (deterministic)."""
    counts = list(DEFAULT_ATTRIBUTES.values())
    buffer = io.BytesIO()
    render([1] * len(counts), counts, 7, source_size).save(buffer, "PNG")
    return buffer.getvalue()


def add_warmup(config: mc.ModelConfig, source_size: int) -> mc.ModelConfig:
    """`config` with one warmup sample of batch 1, run `RUNS` times: the image input (tensor
    or encoded bytes) from the real image, every other input zeros."""
    sample = config.model_warmup.add(name=SAMPLE, batch_size=1, count=RUNS)
    for tensor in config.input:
        value = sample.inputs[tensor.name]
        value.data_type = tensor.data_type
        value.dims.extend(tensor.dims)
        if tensor.data_type == mc.TYPE_STRING:
            value.input_data_file = BYTES_FILE
        elif tensor.data_type == mc.TYPE_UINT8 and list(tensor.dims)[-2:] == [source_size] * 2:
            value.input_data_file = IMAGE_FILE
        else:
            value.zero_data = True
    return config


def write_warmup_files(model_dir: Path, config: mc.ModelConfig, source_size: int) -> list[Path]:
    """The data files `config`'s warmup names, in `<model_dir>/warmup/`."""
    names = {
        value.input_data_file
        for sample in config.model_warmup
        for value in sample.inputs.values()
        if value.input_data_file
    }
    png = warmup_png(source_size)
    data = {
        # raw row-major uint8 [3, S, S]
        IMAGE_FILE: lambda: load_image(png, source_size).tobytes(),
        # one BYTES element: its 4-byte little-endian length, then the bytes
        BYTES_FILE: lambda: struct.pack("<I", len(png)) + png,
    }
    written = []
    for name in sorted(names):
        path = model_dir / WARMUP_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data[name]())
        written.append(path)
    return written
