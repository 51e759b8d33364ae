"""Live under load, against a real `milvus-lite server` process: 8 query clients while
another upserts and deletes 1,000 items; then a kill -9 and a restart lose nothing that
was acknowledged."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from asen.catalog.files import open_catalog
from asen.catalog.load import delete_items, load_catalog, upsert_batches
from asen.catalog.query import search
from asen.catalog.store import CatalogStore, parse_store
from tests.asen.catalog.store_world import (
    ATTRIBUTES,
    SERVER,
    free_port,
    items_table,
    make_items,
    start_server,
    unit,
    write_catalog,
)

N = 3000
CHANGES = 1000
BATCH = 20
CLIENTS = 8


@pytest.fixture
def served(tmp_path):
    if not os.path.exists(SERVER):
        pytest.skip("needs the milvus-lite command (pip install milvus-lite)")
    items = make_items(N + CHANGES, seed=4)
    write_catalog(tmp_path / "catalog", {k: v[:N] for k, v in items.items()})
    port = free_port()
    procs = [start_server(tmp_path / "data", port)]
    address = parse_store(f"http://127.0.0.1:{port}")
    load_catalog(open_catalog(tmp_path / "catalog"), address)
    yield items, address, procs, tmp_path / "data", port
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _changes(items: dict) -> dict:
    """1,000 upserts (800 new items, 200 changed ones with new vectors and price)."""
    changed = {k: (list(v[N:]) if isinstance(v, list) else v[N:].copy()) for k, v in items.items()}
    for j in range(200):  # rewrite items 0..199 under their ids
        changed["id"][j] = items["id"][j]
        changed["price"][j] = 1000.0 + j
    return changed


def _writer(address, changes, acked: dict, deleted: set, errors: list) -> None:
    """Upsert 1,000 items, then delete 1,000 (the 800 new ones and 200 loaded ones);
    after each acknowledgement the next query must see it."""
    try:
        with CatalogStore.open(address) as store:
            for start in range(0, CHANGES, BATCH):
                upsert_batches(store, [items_table(changes, start, start + BATCH)])
                for j in range(start, start + BATCH):
                    acked[changes["id"][j]] = j
                j = start + BATCH - 1  # its own vectors find it first, with its new price
                hits = search(
                    store,
                    weights={ATTRIBUTES[0]: 1.0, ATTRIBUTES[1]: 1.0},
                    k=1,
                    vectors=changes["vectors"][j],
                    fields=["price"],
                )
                assert hits[0].id == changes["id"][j], "an acknowledged upsert is not seen"
                assert hits[0].fields["price"] == changes["price"][j]
            gone = [changes["id"][j] for j in range(200, CHANGES)] + [
                f"item{i:06d}" for i in range(200, 400)
            ]
            for start in range(0, len(gone), BATCH):
                part = gone[start : start + BATCH]
                assert len(delete_items(store, part)) == len(part)
                deleted.update(part)
                hits = search(
                    store,
                    weights={ATTRIBUTES[2]: 1.0},
                    k=20,
                    vectors=_vectors_of(changes, part[-1]),
                )
                assert part[-1] not in {h.id for h in hits}, "a deleted item came back"
    except Exception as e:  # noqa: BLE001 - every failure is counted and shown
        errors.append(f"writer: {e!r}")


def _vectors_of(changes: dict, item: str) -> np.ndarray:
    if item in changes["id"]:
        return changes["vectors"][changes["id"].index(item)]
    return unit(np.ones((len(ATTRIBUTES), changes["vectors"].shape[2])))


def _reader(address, stop, deleted: set, counts: list, errors: list, seed: int) -> None:
    rng = np.random.default_rng(seed)
    try:
        with CatalogStore.open(address) as store:
            while not stop.is_set():
                gone_before = set(deleted)
                query = unit(rng.standard_normal((len(ATTRIBUTES), 16)))
                spec = {"price": {"lt": 50}} if rng.random() < 0.5 else None
                hits = search(
                    store, weights={ATTRIBUTES[seed % 4]: 1.0}, k=10, vectors=query, filter=spec
                )
                assert len(hits) == 10
                assert not gone_before & {h.id for h in hits}, "a deleted id was returned"
                counts.append(1)
    except Exception as e:  # noqa: BLE001
        errors.append(f"reader {seed}: {e!r}")


def test_queries_under_updates_then_kill_9_loses_nothing(served):
    items, address, procs, data, port = served
    changes = _changes(items)
    acked, deleted, errors, counts = {}, set(), [], []
    stop = threading.Event()
    readers = [
        threading.Thread(target=_reader, args=(address, stop, deleted, counts, errors, s))
        for s in range(CLIENTS)
    ]
    for t in readers:
        t.start()
    writer = threading.Thread(target=_writer, args=(address, changes, acked, deleted, errors))
    writer.start()
    writer.join(timeout=900)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert len(acked) == CHANGES and len(deleted) == CHANGES and len(counts) >= CLIENTS
    procs[0].send_signal(signal.SIGKILL)  # right after the last acknowledgement
    procs[0].wait(timeout=30)
    procs.append(start_server(data, port))
    with CatalogStore.open(address) as store:
        alive = [i for i in acked if i not in deleted]
        found = store.client.get(store.collection, ids=alive, output_fields=["price"])
        assert {r["id"]: r["price"] for r in found} == {
            i: changes["price"][acked[i]] for i in alive
        }
        assert store.client.get(store.collection, ids=sorted(deleted)) == []
        assert store.count() == N + 800 - CHANGES
