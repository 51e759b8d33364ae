"""The one catalog query: a photo's or a stored item's vectors, one or several weighted
attributes, a metadata filter, k -> ranked hits (docs/catalog-store.md).

The score is `sum_a w_a * cos_a`. The query vector is the concatenation of `w_a * q_a` in
each chosen attribute's block (zeros elsewhere), so Milvus ranks by that score in one
search over the `vec` field. The hits are then re-scored from their stored vectors in
float64 and ordered by (-score, id); more are fetched while a tie or a float32 rounding
at the k-th place could change the top k, so with a FLAT index the result is exactly
numpy's brute force.

Filters are JSON, checked against the collection's fields before Milvus sees them and
compiled with every literal escaped:

    {"category": "dress"}                      equality (also {"eq": v}, {"ne": v})
    {"category": {"in": ["dress", "skirt"]}}   membership
    {"price": {"gte": 10, "lt": 50}}           numeric range (lt, lte, gt, gte)
    {"and": [F, ...]}, {"or": [F, ...]}        several keys in one object also mean "and"
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asen import AsenError
from asen.catalog.store import VECTOR_FIELD, CatalogStore
from asen.data.images import load_image

if TYPE_CHECKING:
    from asen.encoders import Encoder

MAX_K = 1000
MAX_TOPK = 16384  # Milvus's largest search limit
MAX_IN = 1024
MAX_DEPTH = 8
SEARCH_PARAMS = {"flat": {}, "ivf": {"nprobe": 128}, "hnsw": {"ef": 1024}}  # see the docs
RANGES = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class UnknownItemError(AsenError):
    """An item id that is not in the store (HTTP 404)."""


@dataclass
class Hit:
    """One result: the item id, its combined and per-attribute scores, the fields asked."""

    id: str | int
    score: float
    scores: dict[str, float]
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "scores": self.scores, "fields": self.fields}


# ---------------------------------------------------------------------------- filters


def field_literal(value: Any, kind: str, name: str) -> str:
    """One value as a Milvus literal of field type `kind`, escaped; a wrong type is one
    AsenError naming the field."""
    if kind == "VARCHAR" and isinstance(value, str):
        if any(ord(c) < 32 and c not in ESCAPES for c in value):
            raise AsenError(f"filter field {name!r}: control characters are not allowed")
        return '"' + "".join(ESCAPES.get(c, c) for c in value) + '"'
    if kind == "BOOL" and isinstance(value, bool):
        return "true" if value else "false"
    if kind == "INT64" and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= 2**63:
            raise AsenError(f"filter field {name!r}: {value} is out of int64 range")
        return str(value)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "DOUBLE" and numeric and math.isfinite(value):
        return repr(float(value))
    expected = {"VARCHAR": "a string", "BOOL": "true/false", "INT64": "an integer"}
    raise AsenError(
        f"filter field {name!r} takes {expected.get(kind, 'a finite number')}, got {value!r}"
    )


def _condition(name: str, cond: Any, store: CatalogStore) -> str:
    if name not in store.layout.metadata:
        known = ", ".join(store.layout.metadata) or "none"
        raise AsenError(f"unknown filter field {name!r} (fields: {known})")
    kind = store.layout.field_kind(name)
    if not isinstance(cond, dict):
        return f"{name} == {field_literal(cond, kind, name)}"
    if not cond:
        raise AsenError(f"filter field {name!r}: empty condition")
    parts = []
    for op, value in cond.items():
        if op in ("eq", "ne"):
            sign = "==" if op == "eq" else "!="
            parts.append(f"{name} {sign} {field_literal(value, kind, name)}")
        elif op == "in":
            if not isinstance(value, list) or not 0 < len(value) <= MAX_IN:
                raise AsenError(f"filter field {name!r}: 'in' takes a list of 1..{MAX_IN}")
            parts.append(f"{name} in [{', '.join(field_literal(v, kind, name) for v in value)}]")
        elif op in RANGES:
            if kind not in ("INT64", "DOUBLE"):
                raise AsenError(f"filter field {name!r}: '{op}' needs a numeric field")
            literal = field_literal(value, "DOUBLE" if isinstance(value, float) else kind, name)
            parts.append(f"{name} {RANGES[op]} {literal}")
        else:
            raise AsenError(
                f"filter field {name!r}: unknown operator {op!r} (eq ne in lt lte gt gte)"
            )
    return " and ".join(parts)


def compile_filter(spec: Any, store: CatalogStore, depth: int = 0) -> str:
    """A JSON filter (module docstring) as a Milvus expression; "" for none."""
    if spec is None or spec == {}:
        return ""
    if depth > MAX_DEPTH:
        raise AsenError(f"filter nested deeper than {MAX_DEPTH}")
    if not isinstance(spec, dict):
        raise AsenError('a filter is a JSON object, e.g. {"price": {"lt": 50}}')
    parts = []
    for key, value in spec.items():
        if key in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise AsenError(f"filter '{key}' takes a non-empty list of filters")
            inner = [p for p in (compile_filter(v, store, depth + 1) for v in value) if p]
            if inner:
                parts.append("(" + f" {key} ".join(f"({p})" for p in inner) + ")")
        else:
            parts.append(f"({_condition(key, value, store)})")
    return " and ".join(parts)


# ---------------------------------------------------------------------------- the query


def check_weights(weights: dict[str, float], store: CatalogStore) -> dict[str, float]:
    """Attribute -> weight: at least one, each a known attribute with a finite weight > 0."""
    if not weights:
        raise AsenError("choose at least one attribute")
    names = store.layout.attributes
    for name, weight in weights.items():
        if name not in names:
            raise AsenError(f"unknown attribute {name!r} (attributes: {', '.join(names)})")
        ok = isinstance(weight, (int, float)) and not isinstance(weight, bool)
        if not ok or not math.isfinite(weight) or weight <= 0:
            raise AsenError(f"weight of attribute {name!r} must be a number > 0, got {weight!r}")
    return {name: float(w) for name, w in weights.items()}


def check_k(k: Any, most: int = MAX_K) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= most:
        raise AsenError(f"k must be an integer in 1..{most}, got {k!r}")
    return k


def check_fields(fields: list[str] | tuple[str, ...], store: CatalogStore) -> list[str]:
    for name in fields:
        if name not in store.layout.metadata:
            known = ", ".join(store.layout.metadata) or "none"
            raise AsenError(f"unknown field {name!r} (fields: {known})")
    return list(dict.fromkeys(fields))


def item_key(item: Any, store: CatalogStore) -> str | int:
    """An item id in the store's id type; a wrong one is one AsenError."""
    if store.layout.id_type == "int64":
        text = str(item).strip()
        if isinstance(item, bool) or not text.lstrip("-").isdigit() or abs(int(text)) >= 2**63:
            raise AsenError(f"item id {item!r}: this catalog's ids are integers")
        return int(text)
    if not isinstance(item, str) or not item or len(item) > 512:
        raise AsenError(f"item id {item!r}: expected a string of 1..512 characters")
    return item


def item_vectors(store: CatalogStore, item: Any) -> np.ndarray:
    """The stored `[A, D]` vectors of one item; an unknown id is one AsenError."""
    key = item_key(item, store)
    rows = store.call("get", ids=[key], output_fields=[VECTOR_FIELD])
    if not rows:
        raise UnknownItemError(f"unknown item id {key!r} in {store.where}")
    layout = store.layout
    return np.asarray(rows[0][VECTOR_FIELD], np.float32).reshape(len(layout.attributes), -1)


def _query_vector(blocks: np.ndarray, weights: dict[str, float], store: CatalogStore) -> np.ndarray:
    names = store.layout.attributes
    query = np.zeros((len(names), store.layout.dim), np.float32)
    for name, weight in weights.items():
        query[names.index(name)] = weight * blocks[names.index(name)]
    return query.reshape(-1)


def _rescore(
    raw: list[dict],
    blocks: np.ndarray,
    weights: dict[str, float],
    store: CatalogStore,
    fields: list[str],
) -> list[Hit]:
    """Exact float64 scores of Milvus's hits from their stored vectors."""
    names = store.layout.attributes
    hits = []
    for row in raw:
        entity = row["entity"]
        stored = np.asarray(entity[VECTOR_FIELD], np.float64).reshape(len(names), -1)
        scores = {a: float(stored[names.index(a)] @ blocks[names.index(a)]) for a in weights}
        total = float(sum(weights[a] * s for a, s in scores.items()))
        hits.append(Hit(row["id"], total, scores, {f: entity.get(f) for f in fields}))
    hits.sort(key=lambda h: (-h.score, h.id))
    return hits


def index_search_params(index: str, limit: int, tuning: dict[str, int] | None = None) -> dict:
    """The index's search parameters (`tuning` over the defaults); HNSW's ef is raised to
    the search limit, as HNSW returns no more than ef hits."""
    params = {**SEARCH_PARAMS[index], **(tuning or {})}
    if "ef" in params:
        params["ef"] = max(int(params["ef"]), limit)
    return {"metric_type": "IP", "params": params}


def _search_once(
    store: CatalogStore,
    vector: np.ndarray,
    *,
    limit: int,
    expr: str,
    fields: list[str],
    tuning: dict[str, int] | None,
) -> list[dict]:
    params = index_search_params(store.layout.index, limit, tuning)
    found = store.call(
        "search",
        [vector.tolist()],
        limit=limit,
        filter=expr,
        output_fields=[VECTOR_FIELD, *fields],
        search_params=params,
    )
    return list(found[0])


def search(
    store: CatalogStore,
    *,
    weights: dict[str, float],
    k: int,
    vectors: np.ndarray | None = None,
    item: Any = None,
    filter: Any = None,  # noqa: A002 - the query's own word
    fields: list[str] | tuple[str, ...] = (),
    max_k: int = MAX_K,
    tuning: dict[str, int] | None = None,
) -> list[Hit]:
    """The top k items by `sum_a w_a * cos_a` against a photo's `[A, D]` vectors (only
    the weighted rows are read) or a stored item's (the item itself left out), among
    items passing `filter`; ties by id. `tuning` overrides the index's search parameters
    (`{"ef": 512}`, `{"nprobe": 64}`)."""
    weights, k = check_weights(weights, store), check_k(k, max_k)
    fields, expr = check_fields(fields, store), compile_filter(filter, store)
    if (vectors is None) == (item is None):
        raise AsenError("a query is a photo or an item id, one of them")
    exclude = None
    if item is not None:
        exclude, vectors = item_key(item, store), item_vectors(store, item)
    blocks = np.asarray(vectors, np.float64)
    vector = _query_vector(blocks, weights, store)
    tolerance = 1e-5 * sum(weights.values())
    limit = min(k + 1 + max(8, k // 4), MAX_TOPK)
    while True:
        raw = _search_once(store, vector, limit=limit, expr=expr, fields=fields, tuning=tuning)
        hits = [h for h in _rescore(raw, blocks, weights, store, fields) if h.id != exclude]
        exhausted = len(raw) < limit or limit == MAX_TOPK
        lowest = min((r["distance"] for r in raw), default=0.0)
        if exhausted or (len(hits) >= k and lowest < hits[k - 1].score - tolerance):
            return hits[:k]
        limit = min(limit * 4, MAX_TOPK)


def photo_vectors(encoder: Encoder, image: bytes | Path, store: CatalogStore) -> np.ndarray:
    """A photo's `[A, D]` vectors for every attribute, by an encoder of the store's space
    (its identity and attributes are checked first); an undecodable image is one AsenError."""
    from asen.catalog.embed import encoder_identity

    store.check_encoder(encoder_identity(encoder).to_json())
    if list(encoder.info.names) != store.layout.attributes or encoder.info.dim != store.layout.dim:
        raise AsenError(
            f"the encoder's attributes {encoder.info.names} (dim {encoder.info.dim}) are not "
            f"{store.where}'s {store.layout.attributes} (dim {store.layout.dim})"
        )
    pixels = load_image(image, encoder.info.source_size)
    return encoder.encode_all(pixels[None])[0]
