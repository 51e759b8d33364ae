"""Retrieval metrics: the paper's attribute-specific mAP, with array operations.

Protocol (docs/architecture.md, "mAP protocol"): for each attribute, every query of that
attribute is ranked against all candidates of that attribute by similarity (dot product
of the embeddings, which the model has already normalised); a candidate is relevant when
its value equals the query's. The AP of a query is the sum over relevant ranks of
precision at that rank, divided by the number of relevant candidates (0 when none is
relevant). An attribute's mAP is the mean AP of its queries, and the overall mAP averages
the attribute mAPs weighted by their number of queries, i.e. it is the mean AP over all
queries.

Ranking is by descending score; exact ties are broken by candidate index (the lower
index ranks first), exactly as ``np.argsort(-scores, kind="stable")`` orders them, so
results agree to 1e-9 with a straightforward per-query loop. Scores are computed with
a float32 matrix multiply; AP is accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MapResult", "average_precision", "mean_average_precision"]

#: Queries scored, ranked and reduced at a time, to bound memory
#: (a chunk holds a few arrays of ``chunk x candidates`` elements).
DEFAULT_CHUNK = 1024


@dataclass(frozen=True)
class MapResult:
    """mAP of a query/candidate split.

    ``overall`` is the mean of the per-attribute mAPs weighted by their number of
    queries (equal to the mean AP over all queries); ``per_attribute`` and
    ``num_queries`` hold only attributes with at least one query.
    """

    overall: float
    per_attribute: dict[int, float] = field(default_factory=dict)
    num_queries: dict[int, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- ranking


def _descending_order(scores: np.ndarray) -> np.ndarray:
    """Row-wise ranking: candidate indices by descending score, ties by index.

    Identical to ``np.argsort(-scores, axis=1, kind="stable")``. For float32 scores it
    packs an order-preserving 32-bit key of the score with the candidate index into
    one uint64 and sorts those (unique) keys with the fast unstable sort.
    """
    num_rows, num_cols = scores.shape
    if scores.dtype != np.float32 or num_cols >= 2**32:
        return np.argsort(-scores, axis=1, kind="stable")
    # +0.0 turns -0.0 into +0.0, so the two zeros tie as they do under comparison.
    bits = (scores + np.float32(0.0)).view(np.uint32)
    # Descending key: non-negative floats map to 0x7FFFFFFF - bits (larger float,
    # smaller key), negative floats keep their bits (more negative, larger key, and
    # all above the non-negative ones).
    key = np.where(bits >> np.uint32(31), bits, bits ^ np.uint32(0x7FFFFFFF))
    packed = key.astype(np.uint64)
    packed <<= np.uint64(32)
    packed |= np.arange(num_cols, dtype=np.uint64)
    packed.sort(axis=1)
    packed &= np.uint64(0xFFFFFFFF)
    return packed.astype(np.intp)


def _ap_from_ranked_relevance(ranked: np.ndarray) -> np.ndarray:
    """AP per row from relevance in ranked order (bool ``[Q, C]``) -> float64 ``[Q]``.

    Only the relevant positions are visited: the k-th hit (1-based) of a row at rank
    r (1-based) contributes precision k / r.
    """
    num_rows = ranked.shape[0]
    rows, cols = np.nonzero(ranked)  # row-major: ranks ascend within each row
    num_relevant = np.bincount(rows, minlength=num_rows)
    if rows.size == 0:
        return np.zeros(num_rows, dtype=np.float64)
    row_start = np.concatenate(([0], np.cumsum(num_relevant)[:-1]))
    hit = np.arange(1, rows.size + 1, dtype=np.float64) - row_start[rows]
    precision = hit / (cols + 1).astype(np.float64)
    total = np.bincount(rows, weights=precision, minlength=num_rows)
    ap = np.zeros(num_rows, dtype=np.float64)
    has = num_relevant > 0
    ap[has] = total[has] / num_relevant[has]
    return ap


def _check_scores(scores: np.ndarray, relevant: np.ndarray) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [queries, candidates], got shape {scores.shape}")
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise ValueError(f"scores must be a real (float or integer) array, got {scores.dtype}")
    if relevant.dtype != np.bool_:
        raise ValueError(f"relevant must be a bool array, got {relevant.dtype}")
    if relevant.shape != scores.shape:
        raise ValueError(
            f"relevant has shape {relevant.shape}, but scores has shape {scores.shape}; "
            "they must match"
        )
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError("scores contain NaN; a ranking is undefined")


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP of each query row.

    Args:
        scores: float ``[Q, C]``, higher is more similar.
        relevant: bool ``[Q, C]``, whether each candidate is relevant to each query.

    Returns:
        float64 ``[Q]``: for each row, the candidates are ranked by descending score
        (ties by candidate index, as ``np.argsort(-scores, kind="stable")``), and AP is
        the sum over relevant ranks of precision at that rank divided by the number of
        relevant candidates; 0 where none is relevant.
    """
    scores = np.asarray(scores)
    relevant = np.asarray(relevant)
    _check_scores(scores, relevant)
    if scores.shape[1] == 0:
        return np.zeros(scores.shape[0], dtype=np.float64)
    order = _descending_order(scores)
    return _ap_from_ranked_relevance(np.take_along_axis(relevant, order, axis=1))


# ------------------------------------------------------------------------------- mAP


def _check_split(
    name: str, emb: np.ndarray, attr: np.ndarray, val: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    emb = np.asarray(emb)
    attr = np.asarray(attr)
    val = np.asarray(val)
    if emb.ndim != 2:
        raise ValueError(f"{name}_emb must be 2-D [N, D], got shape {emb.shape}")
    if not (np.issubdtype(emb.dtype, np.floating) or np.issubdtype(emb.dtype, np.integer)):
        raise ValueError(f"{name}_emb must be a real (float or integer) array, got {emb.dtype}")
    for label, arr in (("attr", attr), ("val", val)):
        if arr.ndim != 1:
            raise ValueError(f"{name}_{label} must be 1-D [N], got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name}_{label} must be an integer array, got {arr.dtype}")
        if arr.shape[0] != emb.shape[0]:
            raise ValueError(
                f"{name}_{label} has {arr.shape[0]} entries but {name}_emb has "
                f"{emb.shape[0]} rows; they must match"
            )
    emb32 = emb.astype(np.float32, copy=False)
    if not np.isfinite(emb32).all():
        raise ValueError(f"{name}_emb contains NaN or infinite values")
    return emb32, attr.astype(np.int64, copy=False), val.astype(np.int64, copy=False)


def mean_average_precision(
    query_emb: np.ndarray,
    query_attr: np.ndarray,
    query_val: np.ndarray,
    cand_emb: np.ndarray,
    cand_attr: np.ndarray,
    cand_val: np.ndarray,
    num_attributes: int | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> MapResult:
    """Attribute-specific mAP of a query list against a candidate list.

    Args:
        query_emb: ``[Q, D]`` query embeddings (computed with the query's attribute).
        query_attr: int ``[Q]`` attribute of each query.
        query_val: int ``[Q]`` attribute value of each query.
        cand_emb: ``[C, D]`` candidate embeddings.
        cand_attr: int ``[C]`` attribute of each candidate.
        cand_val: int ``[C]`` attribute value of each candidate.
        num_attributes: if given, every attribute id must lie in ``[0, num_attributes)``.
        chunk_size: queries ranked at a time (bounds memory).

    Returns:
        :class:`MapResult`. For each attribute with at least one query, its queries are
        ranked (dot product, float32) against the candidates of that attribute only;
        queries of an attribute without candidates have AP 0.

    Raises:
        ValueError: on mismatched shapes or dtypes, attribute ids out of range, or no
            queries at all.
    """
    q_emb, q_attr, q_val = _check_split("query", query_emb, query_attr, query_val)
    c_emb, c_attr, c_val = _check_split("cand", cand_emb, cand_attr, cand_val)
    if q_emb.shape[1] != c_emb.shape[1]:
        raise ValueError(
            f"query_emb has dimension {q_emb.shape[1]} but cand_emb has dimension "
            f"{c_emb.shape[1]}; they must match"
        )
    if q_emb.shape[0] == 0:
        raise ValueError("there are no queries; mAP is undefined")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if num_attributes is not None:
        for name, attr in (("query_attr", q_attr), ("cand_attr", c_attr)):
            if attr.size and (attr.min() < 0 or attr.max() >= num_attributes):
                raise ValueError(
                    f"{name} holds ids in [{attr.min()}, {attr.max()}], outside "
                    f"[0, {num_attributes}) for num_attributes={num_attributes}"
                )

    per_attribute: dict[int, float] = {}
    num_queries: dict[int, int] = {}
    ap_sum = 0.0
    for a in np.unique(q_attr).tolist():
        q_idx = np.flatnonzero(q_attr == a)
        c_idx = np.flatnonzero(c_attr == a)
        ap = np.zeros(q_idx.size, dtype=np.float64)
        if c_idx.size:
            cand = np.ascontiguousarray(c_emb[c_idx])
            cand_values = c_val[c_idx]
            for start in range(0, q_idx.size, chunk_size):
                rows = q_idx[start : start + chunk_size]
                scores = q_emb[rows] @ cand.T  # float32 [chunk, C_a]
                order = _descending_order(scores)
                ranked = cand_values[order] == q_val[rows][:, None]
                ap[start : start + rows.size] = _ap_from_ranked_relevance(ranked)
        total = float(ap.sum())
        per_attribute[int(a)] = total / q_idx.size
        num_queries[int(a)] = int(q_idx.size)
        ap_sum += total
    overall = ap_sum / q_emb.shape[0]
    return MapResult(overall=overall, per_attribute=per_attribute, num_queries=num_queries)
