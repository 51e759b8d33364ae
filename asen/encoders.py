"""The Encoder protocol (DESIGN contract 4) and its PyTorch implementation.

An Encoder maps uint8 images [B,3,S,S] and int64 attribute ids [B] (numpy) to float32
embeddings [B,D]. Evaluation, embedding and search take any Encoder, so every backend
(torch, onnx, trt, triton) is measured by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

import asen
from asen import AsenError
from asen.config import AttributeSpec


@dataclass
class ModelInfo:
    """What a user of an exported artifact needs to know; stored beside every artifact."""

    attributes: list[AttributeSpec]
    source_size: int
    dim: int
    beta: float
    stage: int
    asen_version: str = asen.__version__

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def to_metadata(self) -> dict[str, str]:
        """Flat string metadata (ONNX metadata_props, Triton parameters, JSON sidecars)."""
        return {
            "asen_version": self.asen_version,
            "attribute_names": ",".join(self.names),
            "attribute_values": ",".join(str(a.values) for a in self.attributes),
            "source_size": str(self.source_size),
            "embedding_dim": str(self.dim),
            "beta": str(self.beta),
            "stage": str(self.stage),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "metadata") -> ModelInfo:
        try:
            names = meta["attribute_names"].split(",")
            counts = [int(v) for v in meta["attribute_values"].split(",")]
            return cls(
                attributes=[AttributeSpec(n, c) for n, c in zip(names, counts, strict=True)],
                source_size=int(meta["source_size"]),
                dim=int(meta["embedding_dim"]),
                beta=float(meta["beta"]),
                stage=int(meta["stage"]),
                asen_version=meta.get("asen_version", "unknown"),
            )
        except (KeyError, ValueError) as e:
            raise AsenError(f"{source}: missing or malformed asen metadata ({e})") from e

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> ModelInfo:
        model = ckpt["config"]["model"]
        stage = int(ckpt["stage"])
        return cls(
            attributes=[AttributeSpec(a["name"], a["values"]) for a in ckpt["attributes"]],
            source_size=2 * int(model["image_size"]),
            dim=int(model["embed_dim"]) * (2 if stage == 2 else 1),
            beta=float(model["beta"]),
            stage=stage,
            asen_version=ckpt.get("asen_version", "unknown"),
        )


@runtime_checkable
class Encoder(Protocol):
    """encode(images uint8 [B,3,S,S], attributes int64 [B]) -> float32 [B,D]."""

    backend: str
    info: ModelInfo

    def encode(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray: ...


def check_inputs(images: np.ndarray, attributes: np.ndarray, info: ModelInfo) -> None:
    """Reject what no backend could encode, with one clear line."""
    s = info.source_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, s, s):
        raise AsenError(
            f"images must be uint8 [B,3,{s},{s}], got {images.dtype} {list(images.shape)}"
        )
    if attributes.ndim != 1 or len(attributes) != len(images):
        raise AsenError(
            f"attributes must be [B] with B={len(images)}, got {list(attributes.shape)}"
        )
    n = len(info.attributes)
    bad = attributes[(attributes < 0) | (attributes >= n)]
    if len(bad):
        raise AsenError(
            f"attribute id {int(bad[0])} out of range (0..{n - 1}: {', '.join(info.names)})"
        )


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when available; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AsenError("--device cuda: no CUDA GPU is available to PyTorch here")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise AsenError(f"--device {device}: expected auto, cpu or cuda")
    return torch.device(device)


class TorchEncoder:
    """Runs a checkpoint (or a model in memory) with PyTorch."""

    backend = "torch"

    def __init__(
        self, model: torch.nn.Module, info: ModelInfo, device: torch.device, batch_size: int = 64
    ):
        self.model, self.info, self.device, self.batch_size = model, info, device, batch_size

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", batch_size: int = 64
    ) -> TorchEncoder:
        from asen.checkpoint import load_model

        dev = resolve_device(device)
        model, ckpt = load_model(path, dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return cls(model, ModelInfo.from_checkpoint(ckpt), dev, batch_size)

    @torch.inference_mode()
    def encode(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        attributes = np.asarray(attributes, dtype=np.int64)
        check_inputs(images, attributes, self.info)
        was_training = self.model.training
        self.model.eval()
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(images[i : i + self.batch_size]).to(self.device)
            a = torch.from_numpy(attributes[i : i + self.batch_size]).to(self.device)
            out.append(self.model(x, a).float().cpu().numpy())
        self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.info.dim), np.float32)
