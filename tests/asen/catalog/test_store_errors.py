"""Every bad input to the store is one AsenError line, and the store keeps serving."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest

from asen import AsenError
from asen.catalog.files import open_catalog
from asen.catalog.load import delete_items, load_catalog, store_stats
from asen.catalog.query import compile_filter, search
from asen.catalog.store import VECTOR_FIELD, CatalogStore, StoreLayout, connect, parse_store
from tests.asen.catalog.store_world import (
    ATTRIBUTES,
    CATEGORIES,
    OTHER_IDENTITY,
    make_items,
    write_catalog,
)

N = 300


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    items = make_items(N, seed=2)
    write_catalog(root / "catalog", items, chunk=128)
    address = parse_store(str(root / "store.db"))
    load_catalog(open_catalog(root / "catalog"), address)
    with CatalogStore.open(address) as store:
        yield root, items, address, store


def test_store_uris(tmp_path):
    assert parse_store(str(tmp_path / "c.db")).is_lite_file
    server = parse_store("http://user:pa%40ss@milvus.example:19530")
    assert (server.uri, server.token) == ("http://milvus.example:19530", "user:pa@ss")
    assert parse_store("https://h", token="t").uri == "https://h:19530"
    for bad, says in [
        (str(tmp_path / "c.sqlite"), "ending in .db"),
        (str(tmp_path / "no" / "c.db"), "does not exist"),
        ("ftp://h:1", r"only http\(s\)"),
        ("http://h:port", "not a number"),
        ("http://h:1/db?x=1", r"expected http\(s\)"),
    ]:
        with pytest.raises(AsenError, match=says):
            parse_store(bad)
    with pytest.raises(AsenError, match="--token gives another"):
        parse_store("http://a@h:1", token="b")


def test_unreachable_store_is_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    with pytest.raises(AsenError, match=r"cannot be reached") as caught:
        connect(parse_store(f"http://127.0.0.1:{port}"), timeout=2)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"weights": {"colour": 1.0}}, "unknown attribute 'colour'"),
        ({"weights": {ATTRIBUTES[0]: 0.0}}, "must be a number > 0"),
        ({"weights": {ATTRIBUTES[0]: -1}}, "must be a number > 0"),
        ({"weights": {ATTRIBUTES[0]: float("nan")}}, "must be a number > 0"),
        ({"weights": {}}, "at least one attribute"),
        ({"k": 0}, r"k must be an integer in 1\.\.1000"),
        ({"k": 1001}, r"k must be an integer"),
        ({"k": 2.5}, r"k must be an integer"),
        ({"filter": {"colour": "red"}}, "unknown filter field 'colour'"),
        ({"filter": {"price": "cheap"}}, "'price' takes a finite number"),
        ({"filter": {"stock": {"lt": "5"}}}, "'stock' takes an integer"),
        ({"filter": {"category": {"lt": 5}}}, "needs a numeric field"),
        ({"filter": {"category": {"in": []}}}, "'in' takes a list"),
        ({"filter": {"sale": 1}}, "'sale' takes true/false"),
        ({"filter": {"price": {"like": 1}}}, "unknown operator 'like'"),
        ({"filter": {"or": {}}}, "takes a non-empty list"),
        ({"filter": ["price"]}, "a filter is a JSON object"),
        ({"fields": ["colour"]}, "unknown field 'colour'"),
        ({"item": "no-such-item"}, "unknown item id 'no-such-item'"),
    ],
)
def test_bad_queries_are_one_line_and_the_store_keeps_serving(world, query, says):
    _, items, _, store = world
    args = {"weights": {ATTRIBUTES[0]: 1.0}, "k": 5, **query}
    if "item" not in args:
        args["vectors"] = items["vectors"][0]
    with pytest.raises(AsenError, match=says) as caught:
        search(store, **args)
    assert "\n" not in str(caught.value)
    assert len(search(store, weights={ATTRIBUTES[0]: 1.0}, k=5, vectors=items["vectors"][1])) == 5


def test_filter_literals_are_escaped(world):
    _, items, _, store = world
    odd = CATEGORIES[3]  # quotes and a backslash
    expr = compile_filter({"category": odd}, store)
    assert expr == '(category == "it\'s \\"odd\\"\\\\")'
    hits = search(
        store,
        weights={ATTRIBUTES[0]: 1.0},
        k=50,
        vectors=items["vectors"][0],
        filter={"category": odd},
        fields=["category"],
    )
    assert hits and {h.fields["category"] for h in hits} == {odd}
    sneaky = 'dress" or category != "'
    assert (
        search(
            store,
            weights={ATTRIBUTES[0]: 1.0},
            k=5,
            vectors=items["vectors"][0],
            filter={"category": sneaky},
        )
        == []
    )
    with pytest.raises(AsenError, match="control characters"):
        compile_filter({"category": "a\x00b"}, store)


def test_another_encoder_is_refused_and_reloading_is_idempotent(world, tmp_path):
    root, items, address, store = world
    other = write_catalog(tmp_path / "other", items, identity=OTHER_IDENTITY)
    with pytest.raises(AsenError, match="holds vectors of another encoder") as caught:
        load_catalog(open_catalog(other), address)
    assert "\n" not in str(caught.value)
    changed = {**items, "price": items["price"] + 1000}
    write_catalog(tmp_path / "again", changed)
    report = load_catalog(open_catalog(tmp_path / "again"), address)
    assert report.rows == N and report.total == N
    rows = store.client.get(store.collection, ids=[items["id"][7]], output_fields=["price"])
    assert rows[0]["price"] == pytest.approx(items["price"][7] + 1000)
    with pytest.raises(AsenError, match="another encoder"):
        store.check_encoder(OTHER_IDENTITY.to_json())


def test_a_load_cut_short_between_collection_and_index_is_finished_by_a_rerun(tmp_path):
    """Milvus creates a collection, then its index: a stop signal between the two left a
    collection without an index, and the rerun of the load failed on it."""
    items = make_items(40, seed=3)
    catalog = open_catalog(write_catalog(tmp_path / "catalog", items))
    address = parse_store(str(tmp_path / "cut.db"))
    load_catalog(catalog, address)
    with CatalogStore.open(address) as store:  # as the interrupted creation left it
        store.client.release_collection(store.collection)
        store.client.drop_index(store.collection, VECTOR_FIELD)
        assert not store.client.describe_index(store.collection, VECTOR_FIELD)
    report = load_catalog(catalog, address)
    assert report.total == 40
    with CatalogStore.open(address) as store:
        assert store.client.describe_index(store.collection, VECTOR_FIELD)
        hits = search(store, weights={ATTRIBUTES[0]: 1.0}, k=3, item=items["id"][0])
        assert len(hits) == 3


def test_delete_and_stats(world):
    _, items, _, store = world
    before = store_stats(store)["rows"]
    assert delete_items(store, [items["id"][3], "no-such-item"]) == [items["id"][3]]
    stats = store_stats(store)
    assert stats["rows"] == before - 1 and stats["attributes"] == ATTRIBUTES
    hits = search(store, weights={ATTRIBUTES[0]: 1.0}, k=3, vectors=items["vectors"][3])
    assert items["id"][3] not in [h.id for h in hits]
    assert np.isfinite([h.score for h in hits]).all()


STOPPED_MID_CREATE = """
import os, signal, sys, time
import milvus_lite.db
from asen.catalog.store import CatalogStore, StoreLayout, parse_store

create = milvus_lite.db.MilvusLite.create_collection

def slow_create(self, *args, **kwargs):  # the stop signal arrives while the call runs
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
    return create(self, *args, **kwargs)

milvus_lite.db.MilvusLite.create_collection = slow_create
layout = StoreLayout(["collar"], 8, "int64", {}, {"checkpoint_sha256": "0" * 64})
try:
    CatalogStore.create_or_open(parse_store(sys.argv[1]), "shop", layout)
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
"""


def test_a_stop_during_a_milvus_lite_call_is_quiet_and_a_rerun_finishes_it(tmp_path):
    """SIGINT while Milvus Lite's in-process server creates the collection: one line, no
    traceback (the server's call failed as Python exited and logged `cannot schedule new
    futures after interpreter shutdown`); the rerun has the collection, indexed."""
    store = tmp_path / "shop.db"
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_MID_CREATE, str(store)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert done.stdout.strip() == "interrupted" and not done.stderr.strip(), done.stderr
    layout = StoreLayout(["collar"], 8, "int64", {}, {"checkpoint_sha256": "0" * 64})
    with CatalogStore.create_or_open(parse_store(str(store)), "shop", layout) as again:
        assert again.layout.attributes == ["collar"]
        assert again.client.list_indexes(again.collection)
