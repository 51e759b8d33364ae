"""`asen app`: the web page on the served asen_search model. Validation, limits, escaping and
safe image serving through Starlette's test client; the whole page driven in headless
Chromium (upload a query, pick an attribute, the grid shows k results, the query first)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from asen.client.app import Settings, create_app
from asen.client.server import free_port
from markupsafe import escape
from starlette.testclient import TestClient

from tests.client.search_world import serving_search_repo

CHROMIUM = shutil.which("chromium")
LIMIT = 256 * 1024  # a small upload limit for the tests


@pytest.fixture(scope="module")
def world(repo, synth, tmp_path_factory) -> dict:
    with serving_search_repo(repo, synth, tmp_path_factory.mktemp("app")) as world:
        yield world


@pytest.fixture(scope="module")
def client(world):
    app = create_app(Settings(url=world["server"].grpc_url, max_upload_bytes=LIMIT))
    with TestClient(app) as c:
        yield c


def _image(world, n: int = 0) -> Path:
    return sorted((world["data"] / "images" / "test").iterdir())[n]


def _post(client, *, attribute="collar_design", k="5", name="q.png", blob=None, world=None):
    blob = _image(world).read_bytes() if blob is None else blob
    files = {"image": (name, blob, "image/png")}
    return client.post("/search", data={"attribute": attribute, "k": k}, files=files)


def test_home_lists_attributes_and_picks_with_safe_headers(client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    for name in ("collar_design", "sleeve_length", "garment_length", "pattern"):
        assert f'<option value="{name}"' in page.text
    assert page.text.count('class="pick"') > 0
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_upload_returns_k_results_with_the_query_first(client, world) -> None:
    page = _post(client, k="7", world=world)
    assert page.status_code == 200, page.text
    assert page.text.count('class="hit"') == 7
    first = page.text.index('data-rank="1"')
    assert (
        f'data-key="{_image(world).relative_to(world["data"])}"' in page.text[first : first + 200]
    )


def test_pick_from_the_gallery(client, world) -> None:
    key = str(_image(world, 2).relative_to(world["data"]))
    page = client.post("/search", data={"attribute": "pattern", "k": "3", "pick": key})
    assert page.status_code == 200, page.text
    assert page.text.count('class="hit"') == 3


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"attribute": "hem"}, "unknown attribute &#39;hem&#39;; valid: collar_design"),
        ({"k": "0"}, "k must be a whole number from 1 to 100, got &#39;0&#39;"),
        ({"k": "101"}, "k must be a whole number from 1 to 100"),
        ({"k": "1e3"}, "k must be a whole number"),
        ({"blob": b"not an image at all"}, "the upload is not an image this page can read"),
        ({"blob": b""}, "the uploaded file is empty"),
    ],
)
def test_bad_input_is_one_clear_line(client, world, form, message) -> None:
    page = _post(client, world=world, **form)
    assert page.status_code == 400
    assert 'class="error"' in page.text and message in page.text
    assert _post(client, world=world).status_code == 200  # still serving


def test_no_image_at_all(client) -> None:
    page = client.post("/search", data={"attribute": "pattern", "k": "3"})
    assert page.status_code == 400 and "choose an image to upload, or pick one" in page.text
    page = client.post("/search", data={"attribute": "pattern", "pick": "../../etc/passwd"})
    assert page.status_code == 400 and "no gallery image" in page.text


def test_oversized_upload_is_refused(client, world) -> None:
    page = _post(client, blob=b"\x89PNG" + bytes(2 * LIMIT), world=world)
    assert page.status_code == 413 and "upload too large" in page.text
    assert _post(client, world=world).status_code == 200


def test_everything_is_escaped(client, world) -> None:
    evil = "<script>alert(1)</script>.png"
    page = _post(client, name=evil, world=world)
    assert page.status_code == 200
    assert "<script>alert" not in page.text and str(escape(evil)) in page.text
    page = _post(client, attribute="<img src=x onerror=alert(1)>", world=world)
    assert page.status_code == 400 and "<img src=x" not in page.text


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "/etc/passwd",
        "images/../../outside.png",
        "filenames_test.txt",
        "images/test/missing.png",
    ],
)
def test_images_only_from_inside_the_dataset_root(client, world, key) -> None:
    (world["data"].parent / "outside.png").write_bytes(_image(world).read_bytes())
    assert client.get(f"/images/{key}").status_code == 404


def test_gallery_image_is_served(client, world) -> None:
    key = _image(world).relative_to(world["data"])
    response = client.get(f"/images/{key}")
    assert response.status_code == 200 and response.content == _image(world).read_bytes()


def test_cli_errors_are_one_line() -> None:
    from typer.testing import CliRunner

    from asen.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["app", "--url", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 1 and "unreachable" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["app", "--max-upload-mb", "0"])
    assert result.exit_code == 1 and "--max-upload-mb 0.0: must be positive" in result.output


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


@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs it)"
)
def test_page_in_headless_chromium(world, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    app = create_app(Settings(url=world["server"].grpc_url))
    port = free_port()
    server, thread = _serve(app, port)
    query = _image(world, 1)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#image", str(query))
            page.select_option("#attribute", "sleeve_length")
            page.fill("#k", "8")
            page.click("#search")
            page.wait_for_selector("#results")
            hits = page.locator("#results .hit")
            assert hits.count() == 8
            assert hits.first.get_attribute("data-key") == str(query.relative_to(world["data"]))
            assert "same sleeve_length" in page.inner_text("#title")
            # wait until every image has finished loading (or failed), then count the broken;
            # polled from here: wait_for_function's in-page polling uses eval, which the
            # page's Content-Security-Policy refuses once the first check finds one loading
            deadline = time.monotonic() + 30
            while not page.evaluate("[...document.images].every(i => i.complete)"):
                assert time.monotonic() < deadline, "images still loading after 30 s"
                time.sleep(0.1)
            broken = page.evaluate("[...document.images].filter(i => i.naturalWidth === 0).length")
            assert broken == 0
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    assert (tmp_path / "app.png").stat().st_size > 10_000
    if os.environ.get("ASEN_APP_SCREENSHOT"):  # how docs/app.png is made
        shutil.copyfile(tmp_path / "app.png", os.environ["ASEN_APP_SCREENSHOT"])
