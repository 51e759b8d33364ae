"""Hostile and broken clients against the served search model and `asen app`, on a real
tritonserver and a real uvicorn: a Unicode digit as the attribute fails its own request
alone (400) while good requests batched with it succeed; the preprocessing model's decode
error is the reason only; the page's numbers are ASCII digits, its preview refuses image
bombs before decoding them, a symlink loop under the data root is a 404, and slow-loris
connections, slow bodies and clients leaving mid-upload are closed or logged in one line."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from asen.client.app import BadRequest, Settings, _int_field, create_app, uvicorn_options
from asen.client.server import free_port
from asen.export.search_model import SEARCH_MODEL
from PIL import Image
from starlette.testclient import TestClient
from tritonclient.utils import InferenceServerException

from tests.client.search_world import serving_search_repo


@pytest.fixture(scope="module")
def world(repo, synth, tmp_path_factory) -> dict:
    with serving_search_repo(repo, synth, tmp_path_factory.mktemp("hostile")) as world:
        yield world


@pytest.fixture(scope="module")
def client(world):
    with TestClient(create_app(Settings(url=world["server"].grpc_url))) as c:
        yield c


def _good_image(world) -> bytes:
    return sorted((world["data"] / "images" / "test").iterdir())[0].read_bytes()


def _search_inputs(module, blob: bytes, attribute: str, k: int = 3) -> list:
    arrays = {
        "image_bytes": (np.array([[blob]], dtype=object), "BYTES"),
        "attribute": (np.array([[attribute.encode()]], dtype=object), "BYTES"),
        "k": (np.array([[k]], dtype=np.int32), "INT32"),
    }
    inputs = []
    for name, (array, dtype) in arrays.items():
        inputs.append(module.InferInput(name, list(array.shape), dtype))
        inputs[-1].set_data_from_numpy(array)
    return inputs


def _one_query(url: str, blob: bytes, attribute: str) -> str:
    """'ok', or the error's status and message."""
    with grpcclient.InferenceServerClient(url) as triton:
        try:
            triton.infer(SEARCH_MODEL, _search_inputs(grpcclient, blob, attribute))
        except InferenceServerException as e:
            return f"{e.status()} {e.message()}"
    return "ok"


def test_a_unicode_digit_attribute_fails_alone_under_concurrency(world) -> None:
    url, blob = world["server"].grpc_url, _good_image(world)
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            bad = [pool.submit(_one_query, url, blob, name) for name in ("²", "³")]
            good = [pool.submit(_one_query, url, blob, "pattern") for _ in range(12)]
            assert [f.result() for f in good] == ["ok"] * 12
            for answer in (f.result() for f in bad):
                assert answer.startswith("StatusCode.INVALID_ARGUMENT"), answer
                assert "unknown attribute" in answer and "Traceback" not in answer
    assert world["server"].alive()


def test_a_unicode_digit_attribute_is_400_over_http(world) -> None:
    with httpclient.InferenceServerClient(world["server"].http_url) as triton:
        with pytest.raises(InferenceServerException) as info:
            triton.infer(SEARCH_MODEL, _search_inputs(httpclient, _good_image(world), "²"))
    assert info.value.status() == "400"
    assert "unknown attribute" in info.value.message()
    assert "/" not in info.value.message()  # no server paths


def test_preprocessing_decode_error_is_the_reason_only(world) -> None:
    array = np.array([[b"not an image"]], dtype=object)
    image = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
    image.set_data_from_numpy(array)
    attribute = grpcclient.InferInput("attribute", [1, 1], "INT64")
    attribute.set_data_from_numpy(np.array([[0]], np.int64))
    with grpcclient.InferenceServerClient(world["server"].grpc_url) as triton:
        with pytest.raises(InferenceServerException) as info:
            triton.infer("asen", [image, attribute])
    message = info.value.message()
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "image_bytes[0]: cannot decode image (" in message
    assert not re.search(r"object at 0x|BytesIO", message), message


# ------------------------------------------------------------------ asen app


@pytest.mark.parametrize(("field", "value"), [("k", "²"), ("k", "٣"), ("k", "9" * 5000)])
def test_app_numbers_are_ascii_digits(client, world, field: str, value: str) -> None:
    files = {"image": ("q.png", _good_image(world), "image/png")}
    page = client.post("/search", data={"attribute": "pattern", field: value}, files=files)
    assert page.status_code == 400
    assert f"{field} must be a whole number from 1 to" in page.text


@pytest.mark.parametrize("value", ["³", "²", "1²", "-1", "0x10"])
def test_nprobe_field_is_ascii_digits(value: str) -> None:
    with pytest.raises(BadRequest, match="nprobe must be a whole number"):
        _int_field({"nprobe": value}, "nprobe", 1, 65536, None)
    assert _int_field({"nprobe": "16"}, "nprobe", 1, 65536, None) == 16


def _bomb() -> bytes:
    """A 13000 x 13000 1-bit PNG: about 20 KB, 169 megapixels."""
    out = io.BytesIO()
    Image.new("1", (13000, 13000)).save(out, "PNG")
    return out.getvalue()


class PeakRss:
    """The highest resident memory of this process while the block runs (sampled)."""

    def __enter__(self) -> PeakRss:
        self.process, self.start = psutil.Process(), psutil.Process().memory_info().rss
        self.peak, self.done = self.start, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    @property
    def grown_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def test_an_image_bomb_is_refused_before_decoding(client) -> None:
    bomb = _bomb()
    assert len(bomb) < 100_000
    with PeakRss() as memory:
        page = client.post(
            "/search",
            data={"attribute": "pattern", "k": "3"},
            files={"image": ("bomb.png", bomb, "image/png")},
        )
    assert page.status_code == 400, page.text
    assert "image too large (" in page.text
    assert memory.grown_mb < 100, f"grew {memory.grown_mb:.0f} MB"


def _looping_root(world, tmp_path: Path) -> Path:
    """A data root with symlink loops listed first among the test split's images."""
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    real = sorted((world["data"] / "images" / "test").iterdir())[0]
    (root / "images" / "real.png").write_bytes(real.read_bytes())
    os.symlink("loop", root / "loop")
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    (root / "filenames_test.txt").write_text("loop/x.png\na/x.png\nimages/real.png\n")
    return root


def test_a_symlink_loop_under_the_data_root_is_a_404(world, tmp_path) -> None:
    settings = Settings(url=world["server"].grpc_url, data_root=_looping_root(world, tmp_path))
    with TestClient(create_app(settings)) as looping:  # start-up survives the loops
        assert looping.get("/images/loop/x.png").status_code == 404
        assert looping.get("/images/a/x.png").status_code == 404
        assert looping.get("/images/images/real.png").status_code == 200
        home = looping.get("/")
    assert home.status_code == 200 and "images/real.png" in home.text
    assert "loop/x.png" not in home.text


# ------------------------------------------------------------------ a real uvicorn


class Serving:
    """The app under a real uvicorn with `uvicorn_options`, in a thread, logging to the
    root logger (so that pytest's caplog sees uvicorn's records too)."""

    def __init__(self, app, settings: Settings):
        import uvicorn

        self.port = free_port()
        options = {**uvicorn_options(settings), "log_config": None}
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Serving:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


def _tiny_app(settings: Settings):
    """The page's own middleware and limits around a route that reads its body."""
    from asen.client.app import FORM_OVERHEAD, BodyLimit
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def echo(request):
        return PlainTextResponse(f"{len(await request.body())} bytes")

    app = Starlette(routes=[Route("/", echo, methods=["GET", "POST"])])
    limit = settings.max_upload_bytes + FORM_OVERHEAD
    app.add_middleware(BodyLimit, limit=limit, timeout_s=settings.body_timeout_s)
    return app


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing the connection, or None if still open."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    return received


def test_slow_loris_headers_are_closed(caplog) -> None:
    settings = Settings(header_timeout_s=1.0)
    caplog.set_level(logging.WARNING)
    with Serving(_tiny_app(settings), settings) as serving:
        idle, partial = serving.connect(), serving.connect()
        partial.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        began = time.monotonic()
        assert _closed_within(partial, 5) is not None
        assert _closed_within(idle, 5) is not None
        assert time.monotonic() - began < 4
        with serving.connect() as ok:  # a normal request on a kept-alive connection
            ok.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.recv(4096).startswith(b"HTTP/1.1 200")
    assert "no request headers within 1 s; closed" in caplog.text


def test_a_slow_body_is_408(caplog) -> None:
    settings = Settings(body_timeout_s=1.0)
    with Serving(_tiny_app(settings), settings) as serving, serving.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        began = time.monotonic()
        answer = _closed_within(sock, 5) or b""
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - began < 4


def test_connections_past_the_limit_get_503() -> None:
    settings = Settings(max_connections=3, header_timeout_s=30.0)
    with Serving(_tiny_app(settings), settings) as serving:
        held = [serving.connect() for _ in range(3)]
        time.sleep(0.3)
        with serving.connect() as extra:
            extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert extra.recv(4096).startswith(b"HTTP/1.1 503")
        for sock in held:
            sock.close()


def test_a_client_leaving_mid_upload_is_one_log_line(world, caplog) -> None:
    settings = Settings(url=world["server"].grpc_url)
    caplog.set_level(logging.WARNING)
    with Serving(create_app(settings), settings) as serving:
        with serving.connect() as sock:
            sock.sendall(
                b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n"
                b"Content-Type: multipart/form-data; boundary=B\r\n\r\n--B\r\n"
                b'Content-Disposition: form-data; name="image"; filename="q.png"\r\n\r\n'
                + b"\x89PNG"
                * 500
            )
            time.sleep(0.3)
        time.sleep(1.0)
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in records if "disconnected" in r.getMessage()], caplog.text
    assert not [r for r in records if r.exc_info], caplog.text
    assert "Traceback" not in caplog.text


# ------------------------------------------------------------------ Triton's own answers

TRITON_OWN = {  # docs/robustness.md, "Triton's own errors": answered by Triton 2.51 itself
    "malformed JSON": (b'{"inputs": [', "failed to parse the request JSON buffer"),
    "data count unlike the shape": (
        b'{"inputs":[{"name":"k","shape":[1,1],"datatype":"INT32","data":[1,2]}]}',
        "Shape does not match true shape of 'data' field",
    ),
    "negative UINT8": (
        b'{"inputs":[{"name":"image","shape":[1,1],"datatype":"UINT8","data":[-1]}]}',
        "Unable to parse 'data'",
    ),
    "negative shape": (
        b'{"inputs":[{"name":"k","shape":[-1,1],"datatype":"INT32","data":[1]}]}',
        "Unable to parse 'shape'",
    ),
}


@pytest.mark.parametrize("case", sorted(TRITON_OWN))
def test_triton_answers_these_client_errors_500_itself(world, case: str) -> None:
    """What docs/robustness.md says of the bundled Triton: these malformed requests never
    reach asen's models, and Triton's HTTP frontend answers them 500 (its JSON errors are
    TRITONSERVER_ERROR_INTERNAL); the server keeps serving. A Triton that answers 400
    fails this test: then the docs' table is out of date."""
    import urllib.error
    import urllib.request

    body, words = TRITON_OWN[case]
    url = f"http://{world['server'].http_url}/v2/models/{SEARCH_MODEL}/infer"
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    message = info.value.read().decode()
    assert info.value.code == 500, (info.value.code, message)
    assert words in message, message
    assert world["server"].alive()


@pytest.mark.parametrize("length", [b"9" * 5000, "²".encode(), b"20000000"])
def test_a_bad_or_huge_content_length_is_refused(length: bytes) -> None:
    settings = Settings(max_upload_bytes=1024)
    with Serving(_tiny_app(settings), settings) as serving, serving.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 413")), answer
