"""Encoders over exported artifacts (DESIGN contract 4): ONNX Runtime and TensorRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from asen import AsenError
from asen.encoders import Encoder, ModelInfo, check_inputs
from export.layout import find_artifact, read_sidecar
from export.onnx import INPUTS, OUTPUT, session
from export.tensorrt import load_engine


def _max_batch(meta: dict[str, str], source: str) -> int:
    try:
        return int(meta["max_batch"])
    except (KeyError, ValueError):
        raise AsenError(f"{source}: missing or malformed max_batch metadata") from None


def _chunks(n: int, size: int):
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


class OnnxEncoder:
    """Runs `model.onnx` with ONNX Runtime: CUDA when available, else the CPU (`providers`)."""

    backend = "onnx"

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int = 64):
        self.path = Path(path)
        self.session = session(self.path, device)
        meta = self.session.get_modelmeta().custom_metadata_map
        names = (
            [i.name for i in self.session.get_inputs()],
            [o.name for o in self.session.get_outputs()],
        )
        if names != (list(INPUTS), [OUTPUT]):
            raise AsenError(f"{self.path}: not an asen graph (inputs/outputs {names})")
        self.info = ModelInfo.from_metadata(meta, str(self.path))
        self.batch_size = max(1, min(batch_size, _max_batch(meta, str(self.path))))
        self.providers: list[str] = self.session.get_providers()

    def describe(self) -> str:
        return f"ONNX Runtime {ort.__version__} on {self.providers[0]}: {self.path}"

    def encode(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        attributes = np.asarray(attributes, dtype=np.int64)
        check_inputs(images, attributes, self.info)
        out = [
            self.session.run(
                [OUTPUT],
                {"image": np.ascontiguousarray(images[part]), "attribute": attributes[part]},
            )[0]
            for part in _chunks(len(images), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.info.dim), np.float32)


class TrtEncoder:
    """Runs `model.plan` with TensorRT: tensors bound by name, torch CUDA buffers, one stream."""

    backend = "trt"

    def __init__(self, path: str | Path, batch_size: int = 64):
        self.path = Path(path)
        meta = read_sidecar(self.path)
        self.info = ModelInfo.from_metadata(meta, str(self.path))
        self.engine = load_engine(self.path, meta)
        self.context = self.engine.create_execution_context()
        self.precision = meta.get("precision", "fp32")
        max_batch = self.engine.get_tensor_profile_shape("image", 0)[2][0]
        self.batch_size = max(1, min(batch_size, int(max_batch)))
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)

    def describe(self) -> str:
        return (
            f"TensorRT {self.precision} on {torch.cuda.get_device_name(self.device)}: {self.path}"
        )

    def encode(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        attributes = np.asarray(attributes, dtype=np.int64)
        check_inputs(images, attributes, self.info)
        out = []
        with torch.cuda.stream(self.stream):
            for part in _chunks(len(images), self.batch_size):
                image = torch.from_numpy(np.ascontiguousarray(images[part])).to(self.device)
                attribute = torch.from_numpy(attributes[part]).to(self.device)
                embedding = torch.empty(
                    (len(image), self.info.dim), dtype=torch.float32, device=self.device
                )
                for name, tensor in (("image", image), ("attribute", attribute)):
                    self.context.set_input_shape(name, tuple(tensor.shape))
                    self.context.set_tensor_address(name, tensor.data_ptr())
                self.context.set_tensor_address(OUTPUT, embedding.data_ptr())
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise AsenError(f"{self.path}: TensorRT execution failed")
                out.append(embedding.cpu())  # waits for the stream
        return torch.cat(out).numpy() if out else np.zeros((0, self.info.dim), np.float32)


def open_encoder(
    backend: str, path: str | Path, device: str = "auto", batch_size: int = 64
) -> Encoder:
    """The onnx or trt Encoder for an artifact file or a model repository folder."""
    if backend == "onnx":
        return OnnxEncoder(find_artifact(path, "onnx"), device, batch_size)
    if device == "cpu":
        raise AsenError("--backend trt runs on a CUDA GPU; --device cpu is not possible")
    return TrtEncoder(find_artifact(path, "trt"), batch_size)
