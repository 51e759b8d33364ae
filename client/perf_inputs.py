"""Input data for perf_analyzer: real images and attributes in its JSON input format.

Each data step is one batch-1 request of the served model:
- an encoder model: the image through the one preprocessing function (`load_image`) as
  base64 raw uint8 [3,S,S], and an attribute id;
- the `asen` ensemble: the image file's own bytes (a BYTES tensor, base64 of its serialized
  form) and an attribute id;
- `asen_search`: the image file's bytes, the attribute's name and k.
Without a dataset, random images stand in (encoded as PNG where the model takes bytes).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from asen import AsenError
from asen.atomic import atomic_write_text
from asen.data.images import load_image
from asen.data.splits import open_dataset

if TYPE_CHECKING:
    from asen.model.shape import ModelInfo

IMAGE, ATTRIBUTE, BYTES_INPUT, K = "image", "attribute", "image_bytes", "k"
KINDS = ("encoder", "ensemble", "search")


def dataset_queries(root: Path, info: ModelInfo, count: int) -> list[tuple[Path, int]]:
    """Up to `count` (image file, attribute id) pairs: the test split's queries, spread
    over it."""
    dataset = open_dataset(root, info.attributes)
    if dataset.names != info.names:
        raise AsenError(
            f"--input-data {root}: its attributes ({', '.join(dataset.names)}) are not the "
            f"served model's ({', '.join(info.names)})"
        )
    entries = dataset.eval_entries("test")
    queries = entries.queries
    picks = np.linspace(0, len(queries) - 1, min(count, len(queries))).round().astype(int)
    return [(Path(entries.files[int(image_id)]), int(attr)) for image_id, attr, _ in queries[picks]]


def dataset_samples(root: Path, info: ModelInfo, count: int) -> list[tuple[np.ndarray, int]]:
    """Up to `count` (image, attribute id) pairs from the test split's queries."""
    return [
        (load_image(path, info.source_size), attr)
        for path, attr in dataset_queries(root, info, count)
    ]


def random_samples(info: ModelInfo, count: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """`count` random images with valid attribute ids (perf_analyzer's own random data
    would send attribute ids out of range)."""
    rng = np.random.default_rng(seed)
    s, n = info.source_size, len(info.attributes)
    return [(rng.integers(0, 256, (3, s, s), dtype=np.uint8), int(k % n)) for k in range(count)]


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 [3,H,W] image encoded as PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()


def _bytes_b64(blob: bytes) -> dict:
    """One BYTES element as perf_analyzer's b64 data: the serialized tensor (a 4-byte
    little-endian length, then the bytes), as Triton's binary protocol carries it."""
    serialized = len(blob).to_bytes(4, "little") + blob
    return {"b64": base64.b64encode(serialized).decode(), "shape": [1]}


def input_steps(
    kind: str, info: ModelInfo, *, root: Path | None, count: int, k: int = 10
) -> list[dict]:
    """perf_analyzer data steps for a served model of `kind` (see KINDS): `count` requests
    from the test queries of the dataset at `root`, else random images."""
    if kind == "encoder":
        pairs = dataset_samples(root, info, count) if root else random_samples(info, count)
        return [
            {
                IMAGE: {
                    "b64": base64.b64encode(image.tobytes()).decode(),
                    "shape": list(image.shape),
                },
                ATTRIBUTE: {"content": [attr], "shape": [1]},
            }
            for image, attr in pairs
        ]
    if root:
        blobs = [(path.read_bytes(), attr) for path, attr in dataset_queries(root, info, count)]
    else:
        blobs = [(png_bytes(image), attr) for image, attr in random_samples(info, count)]
    if kind == "ensemble":
        return [
            {BYTES_INPUT: _bytes_b64(blob), ATTRIBUTE: {"content": [attr], "shape": [1]}}
            for blob, attr in blobs
        ]
    return [
        {
            BYTES_INPUT: _bytes_b64(blob),
            ATTRIBUTE: {"content": [info.names[attr]], "shape": [1]},
            K: {"content": [k], "shape": [1]},
        }
        for blob, attr in blobs
    ]


def write_input_json(steps: list[dict], path: Path) -> Path:
    """perf_analyzer's `--input-data` JSON: one data step per request."""
    atomic_write_text(path, json.dumps({"data": steps}))
    return path
