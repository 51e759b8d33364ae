"""The paper's mAP with the catalog store doing the ranking (`asen eval --store`): the
candidates of an embedded split become store items in an exact (FLAT) collection, and each
query's full ranking of its attribute's candidates comes from the store (docs/catalog-store.md).
It must equal asen/metrics.py on the same embeddings, which shows the store ranks what the
metric expects."""

from __future__ import annotations

import numpy as np

from asen import AsenError
from asen.catalog.query import MAX_TOPK, search
from asen.catalog.store import CatalogStore, StoreAddress, StoreLayout, call, connect
from asen.evaluate import EmbeddedSplit, EvalResult
from asen.metrics import average_precision

EVAL_COLLECTION = "asen_eval"
EVAL_ENCODER = {"checkpoint_sha256": "asen-eval-split", "precision": "as embedded"}
FIELDS = {"attribute": "int64", "value": "int64"}


def _scratch_collection(address: StoreAddress, collection: str, layout: StoreLayout):
    """The evaluation's collection, made anew; a catalog of that name is never dropped."""
    client = connect(address)
    exists = call(client.has_collection, collection, where=str(address))
    client.close()
    if exists:
        with CatalogStore.open(address, collection) as old:
            if old.layout.encoder != EVAL_ENCODER:
                raise AsenError(f"{old.where} is not an evaluation collection; use another name")
            old.call("release_collection")
            call(old.client.drop_collection, collection, where=old.where)
    return CatalogStore.create_or_open(address, collection, layout)


def load_candidates(
    embedded: EmbeddedSplit, names: list[str], address: StoreAddress, collection: str
) -> CatalogStore:
    """The split's candidates as items: id = candidate row, attribute and value fields, the
    embedding in its attribute's block of `vec` (zeros elsewhere)."""
    cand = ~embedded.is_query
    emb, attrs = embedded.embeddings[cand], embedded.attributes[cand]
    dim = emb.shape[1]
    layout = StoreLayout(names, dim, "int64", dict(FIELDS), dict(EVAL_ENCODER), "flat")
    store = _scratch_collection(address, collection, layout)
    for start in range(0, len(emb), 1024):
        rows = []
        for i in range(start, min(start + 1024, len(emb))):
            blocks = np.zeros((len(names), dim), np.float32)
            blocks[attrs[i]] = emb[i]
            value = int(embedded.values[cand][i])
            rows.append(
                {"id": i, "attribute": int(attrs[i]), "value": value, "vec": blocks.ravel()}
            )
        store.call("upsert", rows)
    store.call("flush")
    return store


def _query_ap(
    store: CatalogStore, q: np.ndarray, a: int, value: int, cand_values: np.ndarray, count: int
) -> float:
    names = store.layout.attributes
    blocks = np.zeros((len(names), store.layout.dim), np.float32)
    blocks[a] = q
    hits = search(store, weights={names[a]: 1.0}, k=count, vectors=blocks,
                  filter={"attribute": a}, max_k=MAX_TOPK)  # fmt: skip
    if len(hits) != count:
        raise AsenError(f"the store ranked {len(hits)} of {count} candidates of {names[a]}")
    relevant = cand_values[[int(h.id) for h in hits]] == value
    ranked = np.arange(count, 0, -1, dtype=np.float64)[None]  # the store's order
    return float(average_precision(ranked, relevant[None])[0])


def store_map(
    embedded: EmbeddedSplit, names: list[str], address: StoreAddress, *, backend: str,
    split: str, collection: str = EVAL_COLLECTION,
) -> EvalResult:  # fmt: skip
    """The paper's mAP of an embedded split, ranked by the store (FLAT, exact)."""
    cand_values = embedded.values[~embedded.is_query]
    cand_attrs = embedded.attributes[~embedded.is_query]
    counts = {a: int((cand_attrs == a).sum()) for a in range(len(names))}
    if max(counts.values()) > MAX_TOPK:
        raise AsenError(f"the store ranks at most {MAX_TOPK} candidates of an attribute")
    per: dict[int, list[float]] = {}
    with load_candidates(embedded, names, address, collection) as store:
        for i in np.flatnonzero(embedded.is_query):
            a, value = int(embedded.attributes[i]), int(embedded.values[i])
            ap = 0.0
            if counts[a]:
                ap = _query_ap(store, embedded.embeddings[i], a, value, cand_values, counts[a])
            per.setdefault(a, []).append(ap)
    total = sum(len(v) for v in per.values())
    return EvalResult(
        backend=f"{backend} (store)",
        split=split,
        overall_map=sum(sum(v) for v in per.values()) / total,
        per_attribute={names[a]: float(np.mean(v)) for a, v in sorted(per.items())},
        num_queries={names[a]: len(v) for a, v in sorted(per.items())},
        skipped=embedded.skipped,
    )
