"""Evaluation and embedding of a split through any Encoder (docs/architecture.md,
"Backends" and "mAP protocol")."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asen import AsenError, distributed
from asen.atomic import atomic_write
from asen.data.splits import SplitDataset
from asen.encoders import Encoder, Progress
from asen.metrics import mean_average_precision


@dataclass
class EmbeddedSplit:
    """Every query and candidate entry of a split with its embedding."""

    embeddings: np.ndarray  # float32 [N, D]
    image_ids: np.ndarray  # int64 [N]
    attributes: np.ndarray  # int64 [N]
    values: np.ndarray  # int64 [N]
    is_query: np.ndarray  # bool [N]
    paths: list[str] = field(default_factory=list)
    skipped: int = 0  # entries dropped because their image could not be decoded

    def save(self, path: Path, attribute_names: list[str]) -> None:
        """Write the .npz atomically (a rerun redoes it; no partial file is ever left)."""
        arrays = {
            "embeddings": self.embeddings,
            "image_ids": self.image_ids,
            "attributes": self.attributes,
            "values": self.values,
            "is_query": self.is_query,
            "paths": np.asarray(self.paths),
            "attribute_names": np.asarray(attribute_names),
        }
        atomic_write(path, lambda fh: np.savez(fh, **arrays))


@dataclass
class EvalResult:
    backend: str
    split: str
    overall_map: float
    per_attribute: dict[str, float]
    num_queries: dict[str, int]
    skipped: int = 0

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "split": self.split,
            "overall_map": self.overall_map,
            "per_attribute": self.per_attribute,
            "num_queries": self.num_queries,
        }

    @classmethod
    def load(cls, path: Path) -> EvalResult:
        """Read a file written by `asen eval --json`; a foreign file is one clear error."""
        try:
            raw = json.loads(Path(path).read_text())
            return cls(
                **{
                    k: raw[k]
                    for k in ("backend", "split", "overall_map", "per_attribute", "num_queries")
                }
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise AsenError(f"{path}: not an `asen eval --json` file ({e})") from None


def _check_compatible(encoder: Encoder, dataset: SplitDataset) -> None:
    model_counts = [a.values for a in encoder.info.attributes]
    if model_counts != dataset.counts:
        raise AsenError(
            f"{dataset.root}: dataset attributes {dataset.names} {dataset.counts} do not match "
            f"the model's {encoder.info.names} {model_counts}"
        )


def embed_split(
    encoder: Encoder,
    dataset: SplitDataset,
    split: str,
    *,
    batch_size: int | None = None,
    workers: int = 2,
    skip_bad: bool = False,
    progress: Progress | None = None,
) -> EmbeddedSplit:
    """Embed every query and candidate entry of an evaluation split with
    `encoder.encode_files` (`batch_size` images decoded at a time, default the encoder's).
    Under torchrun each process encodes its share of the entries and every process gets
    them all."""
    _check_compatible(encoder, dataset)
    entries = dataset.eval_entries(split)
    rows = np.concatenate([entries.queries, entries.candidates])
    is_query = np.arange(len(rows)) < len(entries.queries)
    # an (image, attribute) pair is encoded once even if it is listed twice
    pairs, inverse = np.unique(rows[:, :2], axis=0, return_inverse=True)
    mine = pairs[distributed.shard(len(pairs))]
    emb, ok = encoder.encode_files(
        [entries.files[i] for i in mine[:, 0]],
        mine[:, 1],
        skip_bad=skip_bad,
        progress=progress,
        batch_size=batch_size,
        workers=workers,
    )
    emb, ok = distributed.all_gather_array(emb), distributed.all_gather_array(ok)
    keep = ok[inverse.reshape(-1)]
    rows, is_query = rows[keep], is_query[keep]
    return EmbeddedSplit(
        embeddings=emb[inverse.reshape(-1)][keep],
        image_ids=rows[:, 0],
        attributes=rows[:, 1],
        values=rows[:, 2],
        is_query=is_query,
        paths=[str(entries.files[i].relative_to(dataset.root)) for i in rows[:, 0]],
        skipped=int((~keep).sum()),
    )


def num_pairs(dataset: SplitDataset, split: str) -> int:
    """How many (image, attribute) pairs `embed_split` encodes in this process (for
    progress bars)."""
    entries = dataset.eval_entries(split)
    rows = np.concatenate([entries.queries, entries.candidates])[:, :2]
    n = len(np.unique(rows, axis=0))
    return len(range(n)[distributed.shard(n)])


def score(embedded: EmbeddedSplit, names: list[str], *, backend: str, split: str) -> EvalResult:
    """The paper's mAP over an embedded split."""
    q, c = embedded.is_query, ~embedded.is_query
    result = mean_average_precision(
        embedded.embeddings[q],
        embedded.attributes[q],
        embedded.values[q],
        embedded.embeddings[c],
        embedded.attributes[c],
        embedded.values[c],
        len(names),
    )
    return EvalResult(
        backend=backend,
        split=split,
        overall_map=float(result.overall),
        per_attribute={names[a]: float(m) for a, m in result.per_attribute.items()},
        num_queries={names[a]: int(n) for a, n in result.num_queries.items()},
        skipped=embedded.skipped,
    )


def evaluate(
    encoder: Encoder,
    dataset: SplitDataset,
    split: str = "test",
    *,
    batch_size: int | None = None,
    workers: int = 2,
    skip_bad: bool = False,
    progress: Progress | None = None,
) -> EvalResult:
    """Embed a split with `encoder` and compute the paper's mAP."""
    embedded = embed_split(
        encoder,
        dataset,
        split,
        batch_size=batch_size,
        workers=workers,
        skip_bad=skip_bad,
        progress=progress,
    )
    return score(embedded, dataset.names, backend=encoder.backend, split=split)
