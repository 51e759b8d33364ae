"""Encoders over exported artifacts (docs/architecture.md, "Backends"): ONNX Runtime and
TensorRT. The base class (asen.encoders.Encoder) checks inputs and batches; these run one
batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from asen import AsenError
from asen.encoders import Encoder
from asen.model.shape import ModelInfo
from asen.export.layout import find_artifact, read_sidecar
from asen.export.onnx import INPUTS, OUTPUT, session
from asen.export.tensorrt import load_engine


def _max_batch(meta: dict[str, str], source: str) -> int:
    try:
        return int(meta["max_batch"])
    except (KeyError, ValueError):
        raise AsenError(f"{source}: missing or malformed max_batch metadata") from None


class OnnxEncoder(Encoder):
    """Runs `model.onnx` with ONNX Runtime: CUDA when available, else the CPU (`providers`)."""

    backend = "onnx"

    def __init__(self, path: str | Path, device: str = "auto", *, batch_size: int = 64):
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

    @classmethod
    def open(cls, model: str, *, device: str = "auto", batch_size: int = 64) -> OnnxEncoder:
        """`model`: the artifact, its model or version folder, or the model repository."""
        return cls(find_artifact(model, "onnx"), device, batch_size=batch_size)

    def describe(self) -> str:
        return f"ONNX Runtime {ort.__version__} on {self.providers[0]}: {self.path}"

    def encode_batch(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {"image": images, "attribute": attributes})[0]


class TrtEncoder(Encoder):
    """Runs `model.plan` with TensorRT: tensors bound by name, torch CUDA buffers, one stream."""

    backend = "trt"

    def __init__(self, path: str | Path, *, batch_size: int = 64):
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

    @classmethod
    def open(cls, model: str, *, device: str = "auto", batch_size: int = 64) -> TrtEncoder:
        """`model`: the plan, its model or version folder, or the model repository."""
        if device == "cpu":
            raise AsenError("--backend trt runs on a CUDA GPU; --device cpu is not possible")
        return cls(find_artifact(model, "trt"), batch_size=batch_size)

    def describe(self) -> str:
        return (
            f"TensorRT {self.precision} on {torch.cuda.get_device_name(self.device)}: {self.path}"
        )

    def encode_batch(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        with torch.cuda.stream(self.stream):
            image = torch.from_numpy(images).to(self.device)
            attribute = torch.from_numpy(attributes).to(self.device)
            embedding = torch.empty(
                (len(image), self.info.dim), dtype=torch.float32, device=self.device
            )
            for name, tensor in (("image", image), ("attribute", attribute)):
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            self.context.set_tensor_address(OUTPUT, embedding.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise AsenError(f"{self.path}: TensorRT execution failed")
            return embedding.cpu().numpy()  # waits for the stream
