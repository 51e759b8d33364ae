"""Encoders: the one base class of every backend (docs/architecture.md, "Backends") and
its PyTorch implementation.

An Encoder maps uint8 images [B,3,S,S] and int64 attribute ids [B] (numpy) to float32
embeddings [B,D]. The base class owns the input checks, the batching to the backend's
largest batch, decoding image files with the one preprocessing function (`encode_files`),
and `close()` with context-manager behaviour; a backend implements `encode_batch`,
`describe` and `open`. Evaluation, embedding and search take any Encoder, so every backend
(torch, onnx, trt, triton) is measured by the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from asen import AsenError
from asen.atomic import file_sha256
from asen.data.datasets import EntryImages, batches, make_loader
from asen.model.shape import ModelInfo

InputKind = Literal["tensors", "files"]
Progress = Callable[[int], None]


def check_attributes(attributes: Any, n: int, info: ModelInfo) -> np.ndarray:
    """int64 [n] attribute ids, each a valid id of the model; else one clear line."""
    attributes = np.asarray(attributes, dtype=np.int64)
    if attributes.shape != (n,):
        raise AsenError(f"attributes must be [B] with B={n}, got {list(attributes.shape)}")
    count = len(info.attributes)
    bad = attributes[(attributes < 0) | (attributes >= count)]
    if len(bad):
        raise AsenError(
            f"attribute id {int(bad[0])} out of range (0..{count - 1}: {', '.join(info.names)})"
        )
    return attributes


def check_images(images: np.ndarray, info: ModelInfo) -> None:
    """uint8 [B,3,S,S] images of the model's S; else one clear line."""
    s = info.source_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, s, s):
        raise AsenError(
            f"images must be uint8 [B,3,{s},{s}], got {images.dtype} {list(images.shape)}"
        )


def check_inputs(images: np.ndarray, attributes: Any, info: ModelInfo) -> np.ndarray:
    """Reject what no backend could encode, with one clear line; returns int64 attributes."""
    check_images(images, info)
    return check_attributes(attributes, len(images), info)


class Encoder(ABC):
    """encode(images uint8 [B,3,S,S], attributes int64 [B]) -> float32 [B,D], any backend."""

    backend: ClassVar[str]  # the name on the command line: torch, onnx, trt, triton
    info: ModelInfo
    batch_size: int  # the most images one `encode_batch` call receives

    @classmethod
    @abstractmethod
    def open(cls, model: str, **options: Any) -> Encoder:
        """The encoder for a model as named on the command line (a checkpoint, an artifact
        or repository, a served model name), with the options its backend accepts."""

    @abstractmethod
    def encode_batch(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        """One checked batch of at most `batch_size`: contiguous uint8 [b,3,S,S] and
        int64 [b] -> float32 [b,D]."""

    @abstractmethod
    def describe(self) -> str:
        """One line: the engine, where it runs and what it runs."""

    @property
    def input_kind(self) -> InputKind:
        """What `encode_files` sends the backend: decoded `tensors` (the default) or the
        encoded `files`, which the backend decodes with the same preprocessing function."""
        return "tensors"

    def close(self) -> None:  # noqa: B027 - optional: most backends hold nothing to release
        """Release what the backend holds (threads, connections); the default holds none."""

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def empty(self) -> np.ndarray:
        return np.zeros((0, self.info.dim), np.float32)

    def slices(self, n: int) -> list[slice]:
        """The batches of at most `batch_size` that `n` items are sent in."""
        return [slice(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]

    def map_batches(self, fn: Callable[[slice], Any], parts: list[slice]) -> Iterable[Any]:
        """`fn` over the batches, results in order; a backend may run them concurrently."""
        return map(fn, parts)

    def encode(self, images: np.ndarray, attributes: Any) -> np.ndarray:
        """uint8 [B,3,S,S] images and int64 [B] attribute ids -> float32 [B,D]."""
        attributes = check_inputs(images, attributes, self.info)

        def one(part: slice) -> np.ndarray:
            return self.encode_batch(np.ascontiguousarray(images[part]), attributes[part])

        out = list(self.map_batches(one, self.slices(len(images))))
        return np.concatenate(out) if out else self.empty()

    def identity(self) -> dict[str, str]:
        """What identifies the vectors this encoder makes: `checkpoint_sha256` (empty when
        unknown) and `precision`. Backends that know more say so."""
        return {"checkpoint_sha256": "", "precision": "fp32"}

    @property
    def has_all_graph(self) -> bool:
        """Whether `encode_all` runs an all-attributes graph (one global backbone pass per
        image); False: it falls back to one pair pass per attribute."""
        return False

    @property
    def all_batch_size(self) -> int:
        """The most images one `encode_all_batch` call receives: as many rows of attention
        (and local branch) as a pair batch, so memory stays that of `batch_size`."""
        return max(1, self.batch_size // len(self.info.attributes))

    def encode_all_batch(self, images: np.ndarray) -> np.ndarray:
        """One checked batch of at most `all_batch_size` images -> float32 [b,A,D]. This
        default runs the pair function once per attribute; a backend with an
        all-attributes graph overrides it (and `has_all_graph`)."""
        count = len(self.info.attributes)
        tiled = np.repeat(images, count, axis=0)
        attributes = np.tile(np.arange(count, dtype=np.int64), len(images))
        return self.encode(tiled, attributes).reshape(len(images), count, self.info.dim)

    def encode_all(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N,3,S,S] -> float32 [N,A,D]: every attribute's embedding of every image
        (row [i, a] equals `encode(images[i:i+1], [a])`)."""
        check_images(images, self.info)
        parts = [
            slice(i, min(i + self.all_batch_size, len(images)))
            for i in range(0, len(images), self.all_batch_size)
        ]

        def one(part: slice) -> np.ndarray:
            return self.encode_all_batch(np.ascontiguousarray(images[part]))

        runs = self.map_batches if self.has_all_graph else map  # pairs batch inside `encode`
        out = list(runs(one, parts))
        if not out:
            return np.zeros((0, len(self.info.attributes), self.info.dim), np.float32)
        return np.concatenate(out)

    def encode_files(
        self,
        files: Sequence[str | Path],
        attributes: Any,
        *,
        skip_bad: bool = False,
        progress: Progress | None = None,
        batch_size: int | None = None,
        workers: int = 2,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of image files for int64 [N] attribute ids: float32 [N,D] and the mask
        of images decoded (all True unless `skip_bad`; otherwise an undecodable image
        raises BadImageError naming the file). This default decodes with the one
        preprocessing function in `workers` DataLoader processes, `batch_size` images at a
        time (default: the encoder's), and encodes the tensors."""
        attributes = check_attributes(attributes, len(files), self.info)
        data = EntryImages(
            [Path(f) for f in files],
            np.arange(len(files)),
            attributes,
            self.info.source_size,
            skip_bad,
        )
        out = np.zeros((len(files), self.info.dim), dtype=np.float32)
        ok = np.zeros(len(files), dtype=bool)
        for images, attrs, index, good in batches(
            make_loader(data, batch_size or self.batch_size, workers)
        ):
            good = good.numpy()
            index = index.numpy()[good]
            if len(index):
                out[index] = self.encode(images.numpy()[good], attrs.numpy()[good])
                ok[index] = True
            if progress:
                progress(len(good))
        return out, ok


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when available; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AsenError("--device cuda: no CUDA GPU is available to PyTorch here")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise AsenError(f"--device {device}: expected auto, cpu or cuda")
    return torch.device(device)


CPU = torch.device("cpu")


class TorchEncoder(Encoder):
    """Runs a checkpoint (or a model in memory) with PyTorch."""

    backend = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        info: ModelInfo,
        device: torch.device = CPU,
        *,
        batch_size: int = 64,
        source: str = "model in memory",
    ):
        self.model, self.info, self.device = model, info, device
        self.batch_size, self.source = max(1, batch_size), source

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", *, batch_size: int = 64
    ) -> TorchEncoder:
        from asen.checkpoint import load_model

        dev = resolve_device(device)
        model, ckpt = load_model(path, dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        info = ModelInfo.from_checkpoint(ckpt)
        return cls(model, info, dev, batch_size=batch_size, source=str(path))

    @classmethod
    def open(cls, model: str, *, device: str = "auto", batch_size: int = 64) -> TorchEncoder:
        return cls.from_checkpoint(model, device, batch_size=batch_size)

    def describe(self) -> str:
        return f"PyTorch {torch.__version__} on {self.device}: {self.source}"

    def identity(self) -> dict[str, str]:
        """The checkpoint file's sha256 (empty for a model in memory), fp32."""
        path = Path(self.source)
        return {
            "checkpoint_sha256": file_sha256(path) if path.is_file() else "",
            "precision": "fp32",
        }

    def encode(self, images: np.ndarray, attributes: Any) -> np.ndarray:
        """As the base class's, in eval mode (a model in training is put back after)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return super().encode(images, attributes)
        finally:
            self.model.train(was_training)

    @torch.inference_mode()
    def encode_batch(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).to(self.device)
        a = torch.from_numpy(attributes).to(self.device)
        return self.model(x, a).float().cpu().numpy()

    @property
    def has_all_graph(self) -> bool:
        return hasattr(self.model, "forward_all")

    def encode_all(self, images: np.ndarray) -> np.ndarray:
        """As the base class's, in eval mode (a model in training is put back after)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return super().encode_all(images)
        finally:
            self.model.train(was_training)

    @torch.inference_mode()
    def encode_all_batch(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).to(self.device)
        return self.model.forward_all(x).float().cpu().numpy()
