"""The store ranks exactly as numpy's brute force with a FLAT index (20,000 items): photo
and item queries, one attribute and weighted pairs, with and without filters, ties by id."""

from __future__ import annotations

import numpy as np
import pytest

from asen.catalog.files import open_catalog
from asen.catalog.load import load_catalog
from asen.catalog.query import search
from asen.catalog.store import CatalogStore, parse_store
from tests.asen.catalog.store_world import (
    ATTRIBUTES,
    CATEGORIES,
    brute_force,
    make_items,
    unit,
    write_catalog,
)

N = 20_000
DUPLICATES = 200  # the last 200 items repeat the first 200 vectors: exact ties
FILTERS = [
    (None, lambda items, i: True),
    (
        {"category": {"in": [CATEGORIES[0], CATEGORIES[3]]}, "price": {"lt": 40}},
        lambda items, i: (
            items["category"][i] in (CATEGORIES[0], CATEGORIES[3]) and items["price"][i] < 40
        ),
    ),
    (
        {"or": [{"sale": True}, {"stock": {"gte": 10, "lte": 12}}]},
        lambda items, i: bool(items["sale"][i]) or 10 <= items["stock"][i] <= 12,
    ),
]
WEIGHTS = [{ATTRIBUTES[1]: 1.0}, {ATTRIBUTES[0]: 1.0, ATTRIBUTES[2]: 0.25}]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    items = make_items(N, duplicates=DUPLICATES, seed=1)
    write_catalog(root / "catalog", items)
    address = parse_store(str(root / "store.db"))
    report = load_catalog(open_catalog(root / "catalog"), address, index="flat")
    assert report.rows == report.total == N
    with CatalogStore.open(address) as store:
        yield items, store


def _check(hits, expected) -> None:
    assert [h.id for h in hits] == [item for item, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-9)


@pytest.mark.parametrize("weights", WEIGHTS, ids=["one", "pair"])
@pytest.mark.parametrize("filter_index", range(len(FILTERS)), ids=["all", "in+range", "or"])
def test_photo_queries_equal_brute_force(world, weights, filter_index):
    items, store = world
    spec, keep = FILTERS[filter_index]
    rng = np.random.default_rng(filter_index)
    for _ in range(4):
        query = unit(rng.standard_normal((len(ATTRIBUTES), items["vectors"].shape[2])))
        hits = search(store, weights=weights, k=10, vectors=query, filter=spec)
        _check(hits, brute_force(items, query, weights, 10, keep=lambda i: keep(items, i)))
        assert all(h.scores.keys() == weights.keys() for h in hits)
        for h in hits:
            combined = sum(weights[a] * s for a, s in h.scores.items())
            assert h.score == pytest.approx(combined, abs=1e-12)


@pytest.mark.parametrize("weights", WEIGHTS, ids=["one", "pair"])
@pytest.mark.parametrize("filter_index", range(len(FILTERS)), ids=["all", "in+range", "or"])
def test_item_queries_equal_brute_force_and_leave_the_item_out(world, weights, filter_index):
    items, store = world
    spec, keep = FILTERS[filter_index]
    # items 0..2 have exact duplicates (ties at the top), 5000 and 12345 do not
    for i in (0, 2, 5000, 12345):
        item = items["id"][i]
        hits = search(store, weights=weights, k=10, item=item, filter=spec, fields=["price"])
        expected = brute_force(
            items, items["vectors"][i], weights, 10, keep=lambda j: keep(items, j), exclude=item
        )
        _check(hits, expected)
        assert item not in [h.id for h in hits]
        assert all(h.fields["price"] == items["price"][items["id"].index(h.id)] for h in hits)


def test_ties_break_by_id(world):
    items, store = world
    # item 1's duplicate (N - DUPLICATES + 1) scores exactly as item 1 against item 1's vectors
    query = items["vectors"][1]
    hits = search(store, weights={ATTRIBUTES[3]: 2.0}, k=2, vectors=query)
    assert [h.id for h in hits] == [items["id"][1], items["id"][N - DUPLICATES + 1]]
    assert hits[0].score == hits[1].score
