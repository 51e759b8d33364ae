"""Verification of an exported graph against PyTorch fp32, as Polygraphy reports it: on the
rows of a dataset's evaluation split (real images, every attribute) or, without a dataset,
on probe images times every attribute; max / mean / p99 absolute difference, min / mean
cosine per row and, with a dataset, the overall mAP of the split against PyTorch's."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np

from asen import AsenError
from asen.data.images import load_image
from asen.data.splits import SplitDataset
from asen.data.synthetic import DEFAULT_ATTRIBUTES, render
from asen.encoders import Encoder
from asen.evaluate import EmbeddedSplit, embed_split, score
from asen.model.shape import ModelInfo


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float
    max_abs_diff: float | None = None  # None: cosine only (reduced precision)
    max_map_drop: float | None = None  # None: no mAP bound (or no dataset)
    min_mean_cosine: float | None = None

    def __str__(self) -> str:
        parts = [f"cosine >= {self.min_cosine:g} on every row"]
        if self.min_mean_cosine is not None:
            parts.append(f"mean cosine >= {self.min_mean_cosine:g}")
        if self.max_abs_diff is not None:
            parts.append(f"max abs diff <= {self.max_abs_diff:g}")
        if self.max_map_drop is not None:
            parts.append(f"mAP drop <= {self.max_map_drop:g}")
        return " and ".join(parts)


ONNX_TOLERANCE = Tolerance(0.9999, 1e-4, 0.001)  # the fp32 graph in ONNX Runtime
ALL_GRAPH_TOLERANCE = Tolerance(0.99999, 1e-4)  # all-attributes vs pair graph, both fp32
TRT_TOLERANCE = {
    "fp32": Tolerance(0.9999, 1e-3),
    "fp16": Tolerance(0.999),
    "int8": Tolerance(0.95, min_mean_cosine=0.999),
}
PRECISION_TOLERANCE = {  # the reduced-precision graphs; `asen export` options override them
    "fp16": Tolerance(0.999, None, 0.005),
    # INT8: a row's cosine dips where a crop box moves by a pixel; the mean and the mAP
    # are what tell a sound quantization from a broken one
    "int8": Tolerance(0.95, None, 0.01, 0.999),
}


def tolerance_for(
    precision: str, *, max_map_drop: float | None = None, min_cosine: float | None = None
) -> Tolerance:
    """The tolerance of a precision's graph, with the user's overrides (reduced precisions)."""
    if precision == "fp32":
        return ONNX_TOLERANCE
    tol = PRECISION_TOLERANCE[precision]
    if max_map_drop is not None:
        tol = replace(tol, max_map_drop=max_map_drop)
    if min_cosine is not None:  # the per-row bound; a mean bound above it comes down too
        mean = tol.min_mean_cosine
        tol = replace(
            tol,
            min_cosine=min_cosine,
            min_mean_cosine=None if mean is None else min(mean, min_cosine),
        )
    return tol


@dataclass
class Parity:
    rows: int
    max_abs_diff: float
    min_cosine: float
    mean_abs_diff: float = 0.0
    p99_abs_diff: float = 0.0
    mean_cosine: float = 1.0
    map_reference: float | None = None  # PyTorch fp32's overall mAP on the dataset split
    map_candidate: float | None = None

    @property
    def map_drop(self) -> float | None:
        if self.map_reference is None or self.map_candidate is None:
            return None
        return self.map_reference - self.map_candidate

    def within(self, tol: Tolerance) -> bool:
        ok = self.min_cosine >= tol.min_cosine
        ok = ok and (tol.min_mean_cosine is None or self.mean_cosine >= tol.min_mean_cosine)
        ok = ok and (tol.max_abs_diff is None or self.max_abs_diff <= tol.max_abs_diff)
        drop = self.map_drop
        return ok and (tol.max_map_drop is None or drop is None or drop <= tol.max_map_drop)

    def __str__(self) -> str:
        text = (
            f"max abs diff {self.max_abs_diff:.3g}, mean {self.mean_abs_diff:.3g}, "
            f"p99 {self.p99_abs_diff:.3g}; min cosine {self.min_cosine:.8f}, "
            f"mean {self.mean_cosine:.8f} over {self.rows} rows"
        )
        if self.map_drop is not None:
            text += (
                f"; mAP {self.map_candidate:.4f} vs PyTorch {self.map_reference:.4f} "
                f"(drop {self.map_drop:+.4f})"
            )
        return text

    def figures(self) -> dict[str, str]:
        """The sidecar fields (`model.json`) of this verification."""
        out = {
            "parity_rows": str(self.rows),
            "parity_max_abs_diff": f"{self.max_abs_diff:.3g}",
            "parity_mean_abs_diff": f"{self.mean_abs_diff:.3g}",
            "parity_p99_abs_diff": f"{self.p99_abs_diff:.3g}",
            "parity_min_cosine": f"{self.min_cosine:.8f}",
            "parity_mean_cosine": f"{self.mean_cosine:.8f}",
        }
        if self.map_drop is not None:
            out["map_pytorch_fp32"] = f"{self.map_reference:.6f}"
            out["map"] = f"{self.map_candidate:.6f}"
        return out


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
    """Absolute differences (max, mean, 99th percentile) and per-row cosine (min, mean)."""
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = (ref * cand).sum(axis=1) / np.maximum(norms, 1e-30)
    diff = np.abs(ref - cand)
    if not diff.size:
        return Parity(0, 0.0, 1.0)
    return Parity(
        rows=len(ref),
        max_abs_diff=float(diff.max()),
        min_cosine=float(cosine.min()),
        mean_abs_diff=float(diff.mean()),
        p99_abs_diff=float(np.percentile(diff, 99)),
        mean_cosine=float(cosine.mean()),
    )


def require(parity: Parity, tol: Tolerance, what: str) -> Parity:
    """`parity` if within `tol`; else one line with the figures (nothing is installed)."""
    if not parity.within(tol):
        raise AsenError(
            f"{what} vs PyTorch parity check failed: {parity} (needs {tol}); nothing was written"
        )
    return parity


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
    return require(parity, tol, what)


def check_all_graph(every: Encoder, pairs: Encoder, what: str = "all-attributes graph") -> Parity:
    """The all-attributes graph against the pair graph (same precision) on the probe images,
    every attribute: `every.encode_all(images)[i, a]` against `pairs.encode(image i, a)`."""
    images, attributes = probe_inputs(pairs.info)
    count = len(pairs.info.attributes)
    together = every.encode_all(np.ascontiguousarray(images[::count]))
    expected = pairs.encode(images, attributes)
    parity = compare(expected, together.reshape(len(expected), -1))
    if not parity.within(ALL_GRAPH_TOLERANCE):
        raise AsenError(
            f"{what} vs the pair graph: {parity} (needs {ALL_GRAPH_TOLERANCE}); nothing was written"
        )
    return parity


class DatasetCheck:
    """Verification on a dataset's evaluation split: PyTorch fp32 embeds it once, each
    candidate is compared on every (image, attribute) row and scored with the same mAP."""

    def __init__(self, reference: Encoder, dataset: SplitDataset, split: str = "valid"):
        self.dataset, self.split = dataset, split
        self.reference = self._embed(reference)
        self.reference_map = self._map(self.reference, reference.backend)

    def _embed(self, encoder: Encoder) -> EmbeddedSplit:
        return embed_split(encoder, self.dataset, self.split, workers=0)

    def _map(self, embedded: EmbeddedSplit, backend: str) -> float:
        result = score(embedded, self.dataset.names, backend=backend, split=self.split)
        return result.overall_map

    def check(self, candidate: Encoder, tol: Tolerance, what: str) -> Parity:
        embedded = self._embed(candidate)
        parity = compare(self.reference.embeddings, embedded.embeddings)
        parity.map_reference = self.reference_map
        parity.map_candidate = self._map(embedded, candidate.backend)
        return require(parity, tol, what)
