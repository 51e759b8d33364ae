"""Encoders over exported artifacts (docs/architecture.md, "Backends"): ONNX Runtime and
TensorRT. The base class (asen.encoders.Encoder) checks inputs and batches; these run one
batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from asen.export.layout import SIDECAR, all_variant, find_artifact, read_sidecar
from asen.export.onnx import ALL_INPUTS, GRAPH_KEY, INPUTS, OUTPUT, session
from asen.export.tensorrt import load_engine

from asen import AsenError
from asen.encoders import Encoder
from asen.model.shape import ModelInfo


def _max_batch(meta: dict[str, str], source: str) -> int:
    try:
        return int(meta["max_batch"])
    except (KeyError, ValueError):
        raise AsenError(f"{source}: missing or malformed max_batch metadata") from None


def all_graph_beside(artifact: Path) -> Path | None:
    """The all-attributes artifact exported beside a pair artifact of a model repository
    (`<repo>/<name>_onnx/3/model.onnx` -> `<repo>/<name>_all_onnx/3/model.onnx`), if any."""
    version, model = artifact.parent, artifact.parent.parent
    variant = all_variant(model.name)
    if variant is None:
        return None
    candidate = model.parent / variant / version.name / artifact.name
    return candidate if candidate.is_file() else None


def sidecar_identity(artifact: Path) -> dict[str, str]:
    """The checkpoint sha256 and precision an artifact's `model.json` records."""
    if not (artifact.parent / SIDECAR).is_file():
        return {"checkpoint_sha256": "", "precision": "fp32"}
    meta = read_sidecar(artifact)
    return {
        "checkpoint_sha256": meta.get("checkpoint_sha256", ""),
        "precision": meta.get("precision", "fp32"),
    }


def _gather(every: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """Rows [i, attributes[i]] of an all-attributes result [B, A, D] -> [B, D]."""
    return np.ascontiguousarray(every[np.arange(len(attributes)), attributes])


class OnnxEncoder(Encoder):
    """Runs `model.onnx` with ONNX Runtime: CUDA when available, else the CPU (`providers`).
    The file may be the pair graph or the all-attributes graph; `encode_all` runs the
    all-attributes graph exported beside the pair graph when the repository holds one."""

    backend = "onnx"

    def __init__(self, path: str | Path, device: str = "auto", *, batch_size: int = 64):
        self.path, self.device = Path(path), device
        self.session = session(self.path, device)
        meta = self.session.get_modelmeta().custom_metadata_map
        names = (
            [i.name for i in self.session.get_inputs()],
            [o.name for o in self.session.get_outputs()],
        )
        self.graph = meta.get(GRAPH_KEY, "pair")
        inputs = ALL_INPUTS if self.graph == "all" else INPUTS
        if names != (list(inputs), [OUTPUT]):
            raise AsenError(f"{self.path}: not an asen graph (inputs/outputs {names})")
        self.info = ModelInfo.from_metadata(meta, str(self.path))
        self.batch_size = max(1, min(batch_size, _max_batch(meta, str(self.path))))
        self.providers: list[str] = self.session.get_providers()
        self.all_path = self.path if self.graph == "all" else all_graph_beside(self.path)
        self._all_session = self.session if self.graph == "all" else None

    @classmethod
    def open(cls, model: str, *, device: str = "auto", batch_size: int = 64) -> OnnxEncoder:
        """`model`: the artifact, its model or version folder, or the model repository."""
        return cls(find_artifact(model, "onnx"), device, batch_size=batch_size)

    def describe(self) -> str:
        text = f"ONNX Runtime {ort.__version__} on {self.providers[0]}: {self.path}"
        return text + (f" (all attributes: {self.all_path})" if self.graph != "all" else "")

    def identity(self) -> dict[str, str]:
        return sidecar_identity(self.path)

    @property
    def has_all_graph(self) -> bool:
        return self.all_path is not None

    def encode_batch(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        if self.graph == "all":  # every attribute, then the asked one of each row
            return _gather(self.encode_all_batch(images), attributes)
        return self.session.run([OUTPUT], {"image": images, "attribute": attributes})[0]

    def encode_all_batch(self, images: np.ndarray) -> np.ndarray:
        if self.all_path is None:
            return super().encode_all_batch(images)
        if self._all_session is None:
            self._all_session = session(self.all_path, self.device)
        return self._all_session.run([OUTPUT], {"image": images})[0]


class TrtEncoder(Encoder):
    """Runs `model.plan` with TensorRT: tensors bound by name, torch CUDA buffers, one stream.
    `encode_all` runs the all-attributes plan built beside it when there is one."""

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
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        self.graph = "pair" if "attribute" in names else "all"
        self.all_path = self.path if self.graph == "all" else all_graph_beside(self.path)
        self._all_context = self.context if self.graph == "all" else None

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

    def identity(self) -> dict[str, str]:
        return sidecar_identity(self.path)

    @property
    def has_all_graph(self) -> bool:
        return self.all_path is not None

    def _execute(self, context, feeds: dict[str, torch.Tensor], shape: tuple[int, ...]):
        """Run one batch on the stream; returns the embedding tensor of `shape` on the CPU."""
        with torch.cuda.stream(self.stream):
            feeds = {name: tensor.to(self.device) for name, tensor in feeds.items()}
            embedding = torch.empty(shape, dtype=torch.float32, device=self.device)
            for name, tensor in feeds.items():
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
            context.set_tensor_address(OUTPUT, embedding.data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise AsenError(f"{self.path}: TensorRT execution failed")
            return embedding.cpu().numpy()  # waits for the stream

    def encode_batch(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        if self.graph == "all":  # every attribute, then the asked one of each row
            return _gather(self.encode_all_batch(images), attributes)
        feeds = {"image": torch.from_numpy(images), "attribute": torch.from_numpy(attributes)}
        return self._execute(self.context, feeds, (len(images), self.info.dim))

    def encode_all_batch(self, images: np.ndarray) -> np.ndarray:
        if self.all_path is None:
            return super().encode_all_batch(images)
        if self._all_context is None:
            engine = load_engine(self.all_path, read_sidecar(self.all_path))
            self._all_engine = engine  # the context needs its engine alive
            self._all_context = engine.create_execution_context()
        shape = (len(images), len(self.info.attributes), self.info.dim)
        return self._execute(self._all_context, {"image": torch.from_numpy(images)}, shape)
