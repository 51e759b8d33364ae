"""Parity of an exported artifact against PyTorch, on probe images times every attribute."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from asen import AsenError
from asen.data.images import load_image
from asen.data.synthetic import DEFAULT_ATTRIBUTES, render
from asen.encoders import Encoder, ModelInfo


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float
    max_abs_diff: float | None = None  # None: cosine only (reduced precision)

    def __str__(self) -> str:
        bound = (
            f" and max abs diff <= {self.max_abs_diff:g}" if self.max_abs_diff is not None else ""
        )
        return f"cosine >= {self.min_cosine:g} on every row{bound}"


ONNX_TOLERANCE = Tolerance(0.9999, 1e-4)
TRT_TOLERANCE = {"fp32": Tolerance(0.9999, 1e-3), "fp16": Tolerance(0.999)}


@dataclass
class Parity:
    rows: int
    max_abs_diff: float
    min_cosine: float

    def within(self, tol: Tolerance) -> bool:
        ok = self.min_cosine >= tol.min_cosine
        return ok and (tol.max_abs_diff is None or self.max_abs_diff <= tol.max_abs_diff)

    def __str__(self) -> str:
        return (
            f"max abs diff {self.max_abs_diff:.3g}, min cosine {self.min_cosine:.8f} "
            f"over {self.rows} rows"
        )


def probe_inputs(
    info: ModelInfo, n_images: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`n_images` images (synthetic garments through the one preprocessing function, and
    uniform noise) times every attribute: uint8 [n*A, 3, S, S] and int64 [n*A]."""
    s, n_attr = info.source_size, len(info.attributes)
    rng = np.random.default_rng(seed)
    counts = list(DEFAULT_ATTRIBUTES.values())
    images = []
    for i in range(n_images):
        if i % 2 == 0:
            buf = io.BytesIO()
            render(rng.integers(0, counts).tolist(), counts, int(rng.integers(2**31)), s).save(
                buf, "PNG"
            )
            images.append(load_image(buf.getvalue(), s))
        else:
            images.append(rng.integers(0, 256, (3, s, s), dtype=np.uint8))
    return np.repeat(np.stack(images), n_attr, axis=0), np.tile(np.arange(n_attr), n_images)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Max abs difference and the smallest per-row cosine similarity."""
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = (ref * cand).sum(axis=1) / np.maximum(norms, 1e-30)
    return Parity(
        len(ref), float(np.abs(ref - cand).max(initial=0.0)), float(cosine.min(initial=1.0))
    )


def check_parity(reference: Encoder, candidate: Encoder, tol: Tolerance, what: str) -> Parity:
    """Encode the probe batch with both encoders (the candidate also one row at a time at
    batch 1, another batch size than the export's); raise with the figures if out of `tol`."""
    images, attributes = probe_inputs(reference.info)
    expected = reference.encode(images, attributes)
    batched = candidate.encode(images, attributes)
    rows = np.arange(0, len(images), max(1, len(images) // 4))  # a few rows again, at batch 1
    single = np.concatenate(
        [candidate.encode(images[i : i + 1], attributes[i : i + 1]) for i in rows]
    )
    parity = compare(np.concatenate([expected, expected[rows]]), np.concatenate([batched, single]))
    if not parity.within(tol):
        raise AsenError(
            f"{what} vs PyTorch parity check failed: {parity} (needs {tol}); nothing was written"
        )
    return parity
