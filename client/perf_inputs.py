"""Input data for perf_analyzer: real images and attribute ids as its JSON input format.

Each entry is one batch-1 request of the encoder model: the image through the one
preprocessing function (`load_image`) as base64 raw uint8 [3,S,S], and an attribute id.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asen import AsenError
from asen.atomic import atomic_write_text
from asen.data.images import load_image
from asen.data.splits import open_dataset

if TYPE_CHECKING:
    from asen.model.shape import ModelInfo

IMAGE, ATTRIBUTE = "image", "attribute"


def dataset_samples(root: Path, info: ModelInfo, count: int) -> list[tuple[np.ndarray, int]]:
    """Up to `count` (image, attribute id) pairs: the test split's queries, spread over it."""
    dataset = open_dataset(root, info.attributes)
    if dataset.names != info.names:
        raise AsenError(
            f"--input-data {root}: its attributes ({', '.join(dataset.names)}) are not the "
            f"served model's ({', '.join(info.names)})"
        )
    entries = dataset.eval_entries("test")
    queries = entries.queries
    picks = np.linspace(0, len(queries) - 1, min(count, len(queries))).round().astype(int)
    return [
        (load_image(entries.files[int(image_id)], info.source_size), int(attr))
        for image_id, attr, _ in queries[picks]
    ]


def random_samples(info: ModelInfo, count: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """`count` random images with valid attribute ids (perf_analyzer's own random data
    would send attribute ids out of range)."""
    rng = np.random.default_rng(seed)
    s, n = info.source_size, len(info.attributes)
    return [(rng.integers(0, 256, (3, s, s), dtype=np.uint8), int(k % n)) for k in range(count)]


def write_input_json(samples: list[tuple[np.ndarray, int]], path: Path) -> Path:
    """perf_analyzer's `--input-data` JSON: one data step per sample."""
    data = [
        {
            IMAGE: {"b64": base64.b64encode(image.tobytes()).decode(), "shape": list(image.shape)},
            ATTRIBUTE: {"content": [attribute], "shape": [1]},
        }
        for image, attribute in samples
    ]
    atomic_write_text(path, json.dumps({"data": data}))
    return path
