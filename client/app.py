"""`asen app`: a small web page in front of the served `asen_search` model (Starlette,
served by uvicorn). Upload a query image or pick one from the gallery, choose the attribute
and k, and see the top-k grid with scores and attribute values.

Safety: uploads are bounded (the request body is counted as it arrives, not trusted from
its header), every input is validated before it reaches Triton, every value on the page is
escaped (Jinja2 autoescape) under a restrictive Content-Security-Policy, and gallery images
are served only from inside the dataset root (no path traversal, image files only).
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import logging
import math
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from asen.client.search import BadQueryError, ServedSearch
from jinja2 import Environment, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from asen import AsenError
from asen.data.images import BadImageError, open_image
from asen.parse import whole_number

MAX_UPLOAD_BYTES = 10 * 2**20
MAX_GRID = 100  # the page shows at most this many results
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
PICKS = 12
HEADER_TIMEOUT_S = 10.0  # a connection must send a request's headers within this
BODY_TIMEOUT_S = 60.0  # and its whole body within this (10 MB at 170 KB/s)
MAX_CONNECTIONS = 64  # open connections and running requests; past them, 503
MAX_HEADER_BYTES = 64 * 1024  # request line and headers (h11's incomplete-event limit)
PREVIEWS_AT_ONCE = 2  # uploads decoded for the preview at the same time
log = logging.getLogger("asen.app")
_previews = threading.BoundedSemaphore(PREVIEWS_AT_ONCE)
CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>asen search</title>
<style>
body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}
form.query{display:flex;gap:1em;align-items:end;flex-wrap:wrap;background:#fff;padding:1em;
border:1px solid #ddd}
label{display:flex;flex-direction:column;font-size:.85em;gap:.2em}
.error{color:#b00020;font-weight:bold;margin:1em 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.8em}
.hit,.pick{background:#fff;border:1px solid #ddd;padding:.4em;font-size:.8em}
.hit img,.pick img,.query-image img{width:100%;aspect-ratio:1;object-fit:contain;background:#eee}
.query-image{width:200px}
.key{word-break:break-all;color:#666}
.picks{display:grid;grid-template-columns:repeat(auto-fill,minmax(90px,1fr));gap:.5em}
.pick button{border:0;background:none;padding:0;cursor:pointer;width:100%}
</style></head><body>
<h1>asen: find items like this one, for one attribute</h1>
<form class="query" method="post" action="/search" enctype="multipart/form-data">
<label>query image (at most {{ max_mb }} MB)
<input type="file" id="image" name="image" accept="image/*"></label>
<label>attribute<select id="attribute" name="attribute">
{% for name in names %}<option value="{{ name }}"{% if name == attribute %} selected{% endif %}>
{{ name }}</option>{% endfor %}</select></label>
<label>k<input type="number" id="k" name="k" min="1" max="{{ max_k }}" value="{{ k }}"></label>
{% if ivf %}<label>nprobe<input type="number" id="nprobe" name="nprobe" min="1"
value="{{ nprobe or '' }}"></label>{% endif %}
<button type="submit" id="search">search</button>
</form>
{% if error %}<p class="error" id="error">{{ error }}</p>{% endif %}
{% if hits is not none %}
<h2>query{% if query_name %}: {{ query_name }}{% endif %}</h2>
<div class="query-image">{% if query_src %}<img src="{{ query_src }}" alt="query">{% endif %}</div>
<h2 id="title">top {{ hits|length }} with the same {{ attribute }}</h2>
<div class="grid" id="results">
{% for h in hits %}<div class="hit" data-rank="{{ h.rank }}" data-key="{{ h.path }}"
data-id="{{ h.image_id }}"><img src="/images/{{ h.path|urlencode }}" alt="{{ h.path }}">
<div>#{{ h.rank }} · score {{ "%.4f"|format(h.score) }} · value {{ h.value }}</div>
<div class="key">{{ h.path }}</div></div>{% endfor %}
</div>
{% endif %}
{% if picks %}<h2>or pick a query from the gallery</h2>
<form method="post" action="/search" enctype="multipart/form-data" class="picks">
<input type="hidden" name="attribute" value="{{ attribute }}">
<input type="hidden" name="k" value="{{ k }}">
{% for key in picks %}<div class="pick"><button name="pick" value="{{ key }}" title="{{ key }}">
<img src="/images/{{ key|urlencode }}" alt="{{ key }}"></button></div>{% endfor %}
</form>{% endif %}
</body></html>
"""


class BadRequest(Exception):
    """A user mistake in the form: 400 with one line on the page."""


@dataclass
class Settings:
    url: str | None = None
    model: str = "asen_search"
    protocol: str = "grpc"
    data_root: Path | None = None  # default: the dataset root the served model reports
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    catalog: object | None = None  # CatalogSettings: the catalog page and API (catalog_api.py)


def upload_limit_bytes(megabytes: float) -> int:
    """`--max-upload-mb` as bytes: a positive, finite number of megabytes, at most 1024."""
    if not (isinstance(megabytes, (int, float)) and math.isfinite(megabytes)):
        raise AsenError(f"--max-upload-mb {megabytes}: must be a finite number of megabytes")
    if megabytes <= 0:
        raise AsenError(f"--max-upload-mb {megabytes}: must be positive")
    if megabytes > 1024:
        raise AsenError(f"--max-upload-mb {megabytes}: must be at most 1024")
    return max(1, int(megabytes * 2**20))


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413, whether its
    Content-Length says so or it turns out longer while it arrives; one that has not all
    arrived `timeout_s` after the app first asks for it is answered 408."""

    def __init__(self, app, limit: int, timeout_s: float = BODY_TIMEOUT_S):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        size = None if length is None else whole_number(length.decode("latin-1"))
        if length is not None and (size is None or size > self.limit):
            return await _too_large(self.limit - FORM_OVERHEAD)(scope, receive, send)
        seen, deadline, done = 0, None, False

        async def counted():
            nonlocal seen, deadline, done
            if done:  # the body is in: what comes next is the disconnect, whenever it comes
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                message = "the request body arrived too slowly"
                raise HTTPException(408, message, {"connection": "close"}) from None
            done = not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, _too_large_line(self.limit - FORM_OVERHEAD))
            return message

        return await self.app(scope, counted, send)


class SecurityHeaders:
    """ASGI middleware: a Content-Security-Policy (`csp`, default the search page's) and
    friends on every response."""

    def __init__(self, app, csp: str = CSP):
        self.app = app
        self.headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]

    async def __call__(self, scope, receive, send):
        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        return await self.app(scope, receive, with_headers)


def _too_large_line(limit: int) -> str:
    return f"upload too large: at most {limit / 2**20:.0f} MB"


def _too_large(limit: int) -> Response:
    return Response(_too_large_line(limit), status_code=413, media_type="text/plain")


def gallery_file(root: Path | None, key: str) -> Path:
    """The image file `key` inside `root`; anything outside it, or not an image file, is 404."""
    if root is None or not key:
        raise HTTPException(404)
    base = root.resolve()
    try:
        path = (base / key).resolve()
        ok = path.is_relative_to(base) and path.is_file()
    except (OSError, ValueError, RuntimeError):  # a NUL byte in the name, a symlink loop
        ok = False
    if not ok or path.suffix.lower() not in IMAGE_SUFFIXES:
        raise HTTPException(404)
    return path


def _preview(blob: bytes) -> str:
    """A PNG thumbnail of an upload as a data: URI. The image is opened as `load_image`
    opens it (its header's pixel count checked before anything is decoded), and only
    PREVIEWS_AT_ONCE are decoded at a time; not an image, or too large, is a BadRequest."""
    out = io.BytesIO()
    try:
        with _previews, open_image(blob) as img:
            img.draft("RGB", (256, 256))  # JPEG: decode at a reduced scale
            img.thumbnail((256, 256))
            img.convert("RGB").save(out, "PNG")
    except BadImageError as e:
        reason = str(e).removeprefix("<bytes>: ")
        raise BadRequest(f"the upload is not an image this page can read: {reason}") from None
    except (OSError, ValueError, SyntaxError) as e:  # a truncated or corrupt image body
        reason = type(e).__name__
        raise BadRequest(f"the upload is not an image this page can read ({reason})") from None
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _int_field(form, name: str, low: int, high: int, default: int | None) -> int | None:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return default
    number = whole_number(raw)
    if number is None or not low <= number <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, got {raw[:20]!r}")
    return number


class SearchPage:
    """The page's state: the Triton client, the template, the gallery's root and picks."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.served = ServedSearch(settings.url, settings.model, settings.protocol)
        reported = self.served.params.get("data_root") or None
        root = settings.data_root or (Path(reported) if reported else None)
        self.root = root if root and root.is_dir() else None
        self.ivf = self.served.params.get("index_kind") == "ivf"
        self.max_k = min(self.served.max_k, MAX_GRID)
        self.template = Environment(autoescape=select_autoescape(default=True)).from_string(PAGE)
        self.picks = self._picks()

    def _picks(self) -> list[str]:
        """The first few images listed in the dataset root's test (or valid) split."""
        for split in ("test", "valid"):
            listing = self.root / f"filenames_{split}.txt" if self.root else None
            if listing and listing.is_file():
                with open(listing, encoding="utf-8", errors="replace") as fh:
                    keys = [line.strip() for line in itertools.islice(fh, PICKS * 4)]
                return [k for k in keys if k and self._is_image(k)][:PICKS]
        return []

    def _is_image(self, key: str) -> bool:
        try:
            gallery_file(self.root, key)
        except HTTPException:
            return False
        return True

    def render(self, status: int = 200, **values) -> HTMLResponse:
        context = {
            "names": self.served.names,
            "max_k": self.max_k,
            "max_mb": f"{self.settings.max_upload_bytes / 2**20:.0f}",
            "ivf": self.ivf,
            "picks": self.picks,
            "attribute": self.served.names[0],
            "k": 10,
            "nprobe": None,
            "hits": None,
            "error": None,
            "query_src": None,
            "query_name": None,
            **values,
        }
        return HTMLResponse(self.template.render(**context), status_code=status)

    async def _query(self, form) -> tuple[bytes, str]:
        """The query image's bytes and a name for it, from the upload or the pick."""
        upload, pick = form.get("image"), str(form.get("pick") or "")
        if isinstance(upload, UploadFile) and upload.filename:
            blob = await upload.read(self.settings.max_upload_bytes + 1)
            if len(blob) > self.settings.max_upload_bytes:
                raise HTTPException(413, _too_large_line(self.settings.max_upload_bytes))
            if not blob:
                raise BadRequest("the uploaded file is empty")
            return blob, upload.filename
        if pick:
            try:
                return gallery_file(self.root, pick).read_bytes(), pick
            except HTTPException:
                raise BadRequest(f"no gallery image {pick[:200]!r}") from None
        raise BadRequest("choose an image to upload, or pick one from the gallery")

    async def search(self, request: Request) -> Response:
        try:
            form = await request.form(max_files=1, max_fields=8)
        except ClientDisconnect:  # nobody to answer: one line in the log, no traceback
            log.warning("%s: client disconnected during the upload", _peer(request))
            return Response(status_code=400)
        attribute = str(form.get("attribute") or "")
        shown = {"attribute": attribute if attribute in self.served.names else None}
        try:
            if attribute not in self.served.names:
                valid = ", ".join(self.served.names)
                raise BadRequest(f"unknown attribute {attribute[:50]!r}; valid: {valid}")
            k = _int_field(form, "k", 1, self.max_k, 10)
            nprobe = _int_field(form, "nprobe", 1, 65536, None) if self.ivf else None
            shown.update(k=k, nprobe=nprobe)
            blob, name = await self._query(form)
            preview = await run_in_threadpool(_preview, blob)
            hits = await run_in_threadpool(self.served.search, blob, attribute, k, nprobe)
        except (BadRequest, BadQueryError) as e:
            return self.render(400, error=str(e), **{n: v for n, v in shown.items() if v})
        except AsenError as e:  # the server is unreachable or failed: not the user's mistake
            return self.render(502, error=str(e), **{n: v for n, v in shown.items() if v})
        return self.render(hits=hits, query_src=preview, query_name=name, **shown)


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "a client"


def create_app(settings: Settings) -> Starlette:
    """The ASGI application (connects to Triton now: an unreachable server is an error)."""
    if settings.catalog is not None:  # the catalog page and its JSON API, on the store
        from asen.client.catalog_api import create_catalog_app

        limits = {"max_upload_bytes": settings.max_upload_bytes}
        timeout = settings.body_timeout_s
        return create_catalog_app(settings.catalog, body_timeout_s=timeout, **limits)
    page = SearchPage(settings)

    async def home(request: Request) -> HTMLResponse:
        return page.render()

    async def image(request: Request) -> FileResponse:
        return FileResponse(gallery_file(page.root, request.path_params["key"]))

    routes = [
        Route("/", home),
        Route("/search", page.search, methods=["POST"]),
        Route("/images/{key:path}", image),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(
        BodyLimit,
        limit=settings.max_upload_bytes + FORM_OVERHEAD,
        timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(SecurityHeaders)
    app.state.page = page
    return app


def header_timed_h11(timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request line
    and headers `timeout_s` after it opened or after its last response (slow-loris)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimedH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None and self._waiting_for_headers():
                self._header_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                log.warning("%s: no request headers within %g s; closed", self.client, timeout_s)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._arm()
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimedH11


def uvicorn_options(settings: Settings) -> dict:
    """uvicorn's settings for the page: the header timeout, a connection limit (503 past
    it), a bound on the request line and headers, and the idle keep-alive timeout."""
    return {
        "http": header_timed_h11(settings.header_timeout_s),
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_keep_alive": 5,
        "log_level": "warning",
    }


def run(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080, ready=None) -> None:
    """Serve the page with uvicorn until Ctrl-C, SIGTERM or SIGHUP, then return (a clean
    stop). The port is checked and Triton reached first (each a one-line error);
    `ready(url)` is called before serving."""
    import uvicorn
    from asen.client.server import check_ports

    check_ports(host, {"--port": port})
    app = create_app(settings)
    if ready is not None:
        ready(f"http://{host}:{port}")
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **uvicorn_options(settings)))
    main = threading.current_thread() is threading.main_thread()
    hangup = signal.signal(signal.SIGHUP, server.handle_exit) if main else None  # as SIGTERM
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT / SIGTERM after its own shutdown
        pass
    finally:
        if main:
            signal.signal(signal.SIGHUP, hangup)
