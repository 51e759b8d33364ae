"""`asen app --store`: the catalog's JSON API through Starlette's test client, on a real
Milvus Lite store and a real torch encoder. Photo and item queries, paging, writes with and
without the bearer token, and every bad input as one JSON error while the app keeps serving."""

from __future__ import annotations

import dataclasses
import json
import signal

import numpy as np
import pyarrow.csv as pv
import pytest
from asen.client.app import Settings, create_app
from asen.client.catalog_api import exposure_warning
from starlette.testclient import TestClient

from asen.catalog.query import photo_vectors, search
from asen.catalog.store import CatalogStore, parse_store
from tests.asen.catalog.store_world import SERVER, free_port, start_server
from tests.client.catalog_world import catalog_world, small_checkpoint

LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return catalog_world(tmp_path_factory.mktemp("catalog_api"))


@pytest.fixture(scope="module")
def client(world):
    app = create_app(Settings(catalog=world["settings"], max_upload_bytes=LIMIT))
    with TestClient(app) as client:
        yield client


def _rows(world) -> list[dict]:
    return pv.read_csv(world["table"]).to_pylist()


def _photo(world, row: int) -> bytes:
    return (world["images"] / _rows(world)[row]["image"]).read_bytes()


def _photo_search(client, blob: bytes, query: dict):
    files = {"image": ("q.png", blob, "image/png")}
    return client.post("/api/search", files=files, data={"query": json.dumps(query)})


def test_health_and_openapi(client, world):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["rows"] == len(_rows(world))
    assert health["attributes"] == ["neck", "sleeve length", "fit"]
    spec = client.get("/api/openapi.json").json()
    body = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= body.keys()
    assert body["application/json"]["example"]["attributes"]
    assert {"put", "delete"} <= spec["paths"]["/api/items/{item}"].keys()


def test_every_answer_carries_the_catalog_pages_security_headers(client):
    for answer in (client.get("/"), client.get("/api/health")):
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"


def test_photo_query_two_attributes_with_a_filter(client, world):
    weights = {"neck": 1.0, "fit": 0.5}
    spec = {"category": {"in": ["dress", "coat"]}, "price": {"lt": 150}}
    query = {"attributes": weights, "filter": spec, "k": 5, "fields": ["category", "price"]}
    row = next(
        i for i, r in enumerate(_rows(world)) if r["category"] == "dress" and r["price"] < 150
    )
    response = _photo_search(client, _photo(world, row), query)
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert len(hits) == 5
    assert all(
        h["fields"]["category"] in ("dress", "coat") and h["fields"]["price"] < 150 for h in hits
    )
    assert hits[0]["id"] == _rows(world)[row]["sku"]  # its own photo comes first
    assert hits[0]["score"] == pytest.approx(1.5, abs=1e-4)
    with CatalogStore.open(world["address"]) as store:  # the library's answer, the same
        vectors = photo_vectors(world["encoder"], _photo(world, row), store)
        expected = search(store, weights=weights, k=5, vectors=vectors, filter=spec)
    assert [h["id"] for h in hits] == [h.id for h in expected]


def test_item_query_pages_and_leaves_the_item_out(client, world):
    item = _rows(world)[3]["sku"]
    base = {"item": item, "attributes": {"sleeve length": 2.0}}
    whole = client.post("/api/search", json={**base, "k": 10}).json()["hits"]
    first = client.post("/api/search", json={**base, "k": 5}).json()["hits"]
    second = client.post("/api/search", json={**base, "k": 5, "offset": 5}).json()
    assert [h["id"] for h in first + second["hits"]] == [h["id"] for h in whole]
    assert second["offset"] == 5 and item not in [h["id"] for h in whole]
    scores = [h["score"] for h in whole]
    assert scores == sorted(scores, reverse=True)


def test_put_then_delete_an_item(client, world):
    blob = _photo(world, 0)
    metadata = {
        "category": "shirt",
        "price": 12,
        "in_stock": True,
        "image": _rows(world)[0]["image"],
    }
    put = client.put(
        "/api/items/NEW-1",
        files={"image": ("n.png", blob, "image/png")},
        data={"metadata": json.dumps(metadata)},
    )
    assert put.status_code == 200, put.text
    query = {
        "attributes": {"neck": 1.0},
        "k": 3,
        "filter": {"category": "shirt"},
        "fields": ["price"],
    }
    hits = _photo_search(client, blob, query).json()["hits"]
    assert hits[0]["id"] == "NEW-1" and hits[0]["fields"]["price"] == 12.0
    assert client.delete("/api/items/NEW-1").json() == {"id": "NEW-1", "deleted": True}
    assert "NEW-1" not in [h["id"] for h in _photo_search(client, blob, query).json()["hits"]]
    gone = client.delete("/api/items/NEW-1")
    assert gone.status_code == 404 and "unknown item id" in gone.json()["error"]


def test_writes_need_the_token_when_one_is_set(world):
    settings = dataclasses.replace(world["settings"], write_token="s3cret")
    with TestClient(create_app(Settings(catalog=settings))) as client:
        denied = client.delete("/api/items/" + _rows(world)[1]["sku"])
        assert denied.status_code == 401 and "Bearer" in denied.json()["error"]
        wrong = client.delete("/api/items/x", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.delete("/api/items/x", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 404  # authorised; the item just is not there
        assert client.get("/api/health").json()["rows"] == len(_rows(world))
    assert exposure_warning("0.0.0.0", world["settings"]) is not None
    assert exposure_warning("127.0.0.1", world["settings"]) is None
    assert exposure_warning("0.0.0.0", settings) is None


BAD_JSON = [
    ({"attributes": {"colour": 1}}, 400, "unknown attribute 'colour'"),
    ({"attributes": {"neck": 0}}, 400, "must be a number > 0"),
    ({"attributes": {"neck": 1}, "filter": {"colour": "red"}}, 400, "unknown filter field"),
    ({"attributes": {"neck": 1}, "filter": {"price": "cheap"}}, 400, "'price' takes a finite"),
    ({"attributes": {"neck": 1}, "k": 0}, 400, "k: Input should be greater than or equal to 1"),
    ({"attributes": {"neck": 1}, "k": 101}, 400, "k: Input should be less than or equal"),
    ({"attributes": {"neck": 1}, "item": "nope"}, 404, "unknown item id 'nope'"),
    ({"attributes": {"neck": 1}, "surprise": 1}, 400, "surprise: Extra inputs"),
]


@pytest.mark.parametrize(("body", "status", "says"), BAD_JSON)
def test_bad_item_queries_are_one_json_line(client, world, body, status, says):
    body = {"item": _rows(world)[2]["sku"], **body} if "item" not in body else body
    response = client.post("/api/search", json=body)
    assert response.status_code == status and says in response.json()["error"]
    assert "\n" not in response.json()["error"]
    assert client.get("/api/health").status_code == 200


def test_bad_uploads_are_one_json_line(client, world):
    query = {"attributes": {"neck": 1}}
    not_image = _photo_search(client, b"this is text, not a picture", query)
    assert not_image.status_code == 400 and "image" in not_image.json()["error"]
    big = _photo_search(client, b"\x89PNG" + b"0" * (LIMIT + 70_000), query)
    assert big.status_code == 413
    wrong = client.post("/api/search", content=b"x", headers={"content-type": "text/plain"})
    assert wrong.status_code == 400 and "application/json" in wrong.json()["error"]
    both = _photo_search(client, _photo(world, 0), {**query, "item": "x"})
    assert both.status_code == 400 and "one of them" in both.json()["error"]
    assert client.get("/api/health").status_code == 200


def test_another_encoder_is_refused(world, tmp_path):
    other = small_checkpoint(tmp_path / "other.pt", seed=1)
    settings = dataclasses.replace(world["settings"], model=str(other))
    with TestClient(create_app(Settings(catalog=settings))) as client:
        response = _photo_search(client, _photo(world, 0), {"attributes": {"neck": 1}})
        assert response.status_code == 400 and "another encoder" in response.json()["error"]
        item = {"item": _rows(world)[0]["sku"], "attributes": {"neck": 1}}
        assert client.post("/api/search", json=item).status_code == 200


@pytest.mark.skipif(not SERVER, reason="needs the milvus-lite command")
def test_store_down_is_503_and_the_app_recovers(world, tmp_path):
    port = free_port()
    proc = start_server(tmp_path / "data", port)
    address = parse_store(f"http://127.0.0.1:{port}")
    from asen.catalog.files import open_catalog
    from asen.catalog.load import load_catalog

    load_catalog(open_catalog(world["settings"].store.uri.replace("store.db", "catalog")), address)
    settings = dataclasses.replace(world["settings"], store=address)
    item = {"item": _rows(world)[0]["sku"], "attributes": {"neck": 1}}
    try:
        with TestClient(create_app(Settings(catalog=settings))) as client:
            assert client.post("/api/search", json=item).status_code == 200
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            down = client.post("/api/search", json=item)
            assert down.status_code == 503 and str(port) in down.json()["error"]
            proc = start_server(tmp_path / "data", port)
            again = client.post("/api/search", json=item)
            assert again.status_code == 200, again.text
    finally:
        proc.kill()
        proc.wait(10)
    assert np.isfinite(0.0)


def test_item_images_come_from_the_images_root_only(client, world):
    row = _rows(world)[4]
    image = client.get(f"/api/items/{row['sku']}/image")
    assert (
        image.status_code == 200 and image.content == (world["images"] / row["image"]).read_bytes()
    )
    missing = client.get("/api/items/nope/image")
    assert missing.status_code == 404 and "unknown item id" in missing.json()["error"]
    sneaky = {"category": "shirt", "price": 1.0, "in_stock": False, "image": "../../etc/passwd"}
    put = client.put("/api/items/SNEAKY", files={"image": ("n.png", _photo(world, 0), "image/png")},
                     data={"metadata": json.dumps(sneaky)})  # fmt: skip
    assert put.status_code == 200
    assert client.get("/api/items/SNEAKY/image").status_code == 404
    assert client.delete("/api/items/SNEAKY").status_code == 200
    files = {"image": ("n.png", _photo(world, 0), "image/png")}
    bad_field = client.put("/api/items/X", files=files, data={"metadata": '{"colour": "red"}'})
    assert bad_field.status_code == 400 and "unknown field 'colour'" in bad_field.json()["error"]
