"""The model's shape facts in one object: `ModelInfo` knows the source size S, the
embedding size D, the stage and the attribute specs, read from a config, a checkpoint or
an exported artifact's metadata (docs/architecture.md, "Model forward")."""

from __future__ import annotations

from dataclasses import dataclass

import asen
from asen import AsenError
from asen.config import AttributeSpec, ModelConfig, attributes_from_dicts, config_from_dict


@dataclass
class ModelInfo:
    """What a user of a model or of an exported artifact needs to know."""

    attributes: list[AttributeSpec]
    source_size: int  # S: the model's input images are uint8 [B, 3, S, S]
    dim: int  # D: the embeddings are float32 [B, D]
    beta: float
    stage: int
    asen_version: str = asen.__version__

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @classmethod
    def from_config(
        cls, model: ModelConfig, attributes: list[AttributeSpec], stage: int
    ) -> ModelInfo:
        """The shape of a model built from `model` for `attributes` at `stage`."""
        return cls(
            attributes=list(attributes),
            source_size=model.source_size,
            dim=model.embedding_dim(stage),
            beta=model.beta,
            stage=stage,
        )

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> ModelInfo:
        """The shape of a checkpoint's model (`asen.checkpoint.load_checkpoint`)."""
        info = cls.from_config(
            config_from_dict(ckpt["config"]).model,
            attributes_from_dicts(ckpt["attributes"]),
            int(ckpt["stage"]),
        )
        info.asen_version = ckpt.get("asen_version", "unknown")
        return info

    def to_metadata(self, max_batch: int | None = None) -> dict[str, str]:
        """Flat string metadata: ONNX metadata_props, Triton parameters, the JSON sidecars
        (with `max_batch` for an exported artifact)."""
        meta = {
            "asen_version": self.asen_version,
            "attribute_names": ",".join(self.names),
            "attribute_values": ",".join(str(a.values) for a in self.attributes),
            "source_size": str(self.source_size),
            "embedding_dim": str(self.dim),
            "beta": str(self.beta),
            "stage": str(self.stage),
        }
        if max_batch is not None:
            meta["max_batch"] = str(max_batch)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "metadata") -> ModelInfo:
        """The inverse of `to_metadata`; missing or malformed keys are one clear error."""
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
