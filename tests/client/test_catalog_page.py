"""The catalog page of `asen app --store` in headless Chromium, on a real store and encoder:
upload a photo, tick two attributes, set a filter, see k results that satisfy it; "more like
this" on a result shows that item's neighbours; delete it through the API and the next
search no longer shows it."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request

import pyarrow.csv as pv
import pytest
from asen.client.app import Settings, create_app
from asen.client.server import free_port
from typer.testing import CliRunner

from tests.client.catalog_world import catalog_world

CHROMIUM = shutil.which("chromium")
K = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return catalog_world(tmp_path_factory.mktemp("catalog_page"))


def _serve(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    return server, thread


def _api(port: int, path: str, body: dict | None = None, method: str = "POST") -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _shown(page) -> list[dict]:
    """The result cards: id and their shown fields."""
    return page.evaluate(
        """[...document.querySelectorAll('#results .hit')].map(card => ({
            id: card.dataset.id,
            fields: Object.fromEntries([...card.querySelectorAll('.field')].map(
                f => [f.dataset.field, f.textContent.split(': ').slice(1).join(': ')]))}))"""
    )


def _wait_for(page, predicate, what: str) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs it)"
)
def test_catalog_page_in_headless_chromium(world, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    rows = pv.read_csv(world["table"]).to_pylist()
    query_row = next(r for r in rows if r["category"] in ("dress", "coat") and r["price"] >= 20)
    port = free_port()
    server, thread = _serve(create_app(Settings(catalog=world["settings"])), port)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".attr")
            page.set_input_files("#image", str(world["images"] / query_row["image"]))
            page.check('.attr[data-name="sleeve length"]')  # neck is ticked already
            page.fill('.weight[data-name="sleeve length"]', "0.5")
            page.fill("#f-category", "dress, coat")
            page.fill("#f-price-min", "20")
            page.fill("#k", str(K))
            page.click("#search")
            _wait_for(page, lambda: len(_shown(page)) == K, f"{K} results")
            shown = _shown(page)
            assert all(h["fields"]["category"] in ("dress", "coat") for h in shown)
            assert all(float(h["fields"]["price"]) >= 20 for h in shown)
            assert shown[0]["id"] == query_row["sku"]  # its own photo first
            # "more like this" on the second result: that item's neighbours, itself left out
            target = shown[1]["id"]
            page.locator("#results .hit .more").nth(1).click()
            _wait_for(page, lambda: target in page.inner_text("#title"), "more like this")
            neighbours = [h["id"] for h in _shown(page)]
            query = {
                "item": target, "attributes": {"neck": 1.0, "sleeve length": 0.5},
                "filter": {"and": [{"category": {"in": ["dress", "coat"]}},
                                   {"price": {"gte": 20}}]}, "k": K,
            }  # fmt: skip
            expected = _api(port, "/api/search", query)
            assert neighbours == [h["id"] for h in expected["hits"]] and target not in neighbours
            page.screenshot(path=str(tmp_path / "catalog.png"), full_page=True)
            page.click("#next")  # paging: the next K of the same query
            _wait_for(page, lambda: f"results {K + 1} to" in page.inner_text("#title"), "page 2")
            second = _api(port, "/api/search", {**query, "offset": K})
            assert [h["id"] for h in _shown(page)] == [h["id"] for h in second["hits"]]
            # delete the query's best match through the API: the next search leaves it out
            gone = shown[0]["id"]
            assert _api(port, f"/api/items/{gone}", method="DELETE")["deleted"] is True
            page.click("#search")
            _wait_for(page, lambda: "like the photo" in page.inner_text("#title"), "the search")
            _wait_for(page, lambda: len(_shown(page)) == K, "the new results")
            assert gone not in [h["id"] for h in _shown(page)]
            assert page.evaluate("document.getElementById('error').hidden")
            assert not errors, errors
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    assert (tmp_path / "catalog.png").stat().st_size > 10_000


def test_app_store_errors_are_one_line(tmp_path) -> None:
    from asen.cli import app

    runner = CliRunner()
    unreachable = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["app", "--store", unreachable, "--port", str(free_port())])
    assert result.exit_code == 1 and "cannot be reached" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["app", "--store", str(tmp_path / "x.txt")])
    assert result.exit_code == 1 and "ending in .db" in result.output
