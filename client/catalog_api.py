"""`asen app --store`: the catalog's JSON API (FastAPI, OpenAPI at /api/openapi.json) and the
page that uses it (docs/catalog-store.md).

- `POST /api/search`: JSON `{"item": ID, ...}` ("more like this item"), or multipart with
  an `image` file and a `query` field holding the same JSON without `item`.
- `PUT /api/items/{id}`: multipart `image` + `metadata` (JSON object): embed and upsert.
- `DELETE /api/items/{id}`, `GET /api/health`, `GET /api/items/{id}/image`.

Every error is a JSON `{"error": "one line"}`: 400 for a bad request, 401 for a write
without the bearer token (when one is set), 404 for an unknown item, 413 for an upload
over the limit, 503 when the store cannot be reached. Uploads are bounded by the app's
BodyLimit; the page escapes everything (it builds the DOM with textContent).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asen.client.catalog_page import PAGE_HTML, PAGE_JS
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from asen import AsenError
from asen.catalog.load import delete_items, item_row, store_stats, upsert_rows
from asen.catalog.query import UnknownItemError, item_key, photo_vectors, search
from asen.catalog.store import CatalogStore, StoreAddress, StoreError

MAX_PAGE_K = 100
MAX_OFFSET = 900
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' blob: data:; "
    "style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass
class CatalogSettings:
    """The catalog side of `asen app`: the store, the query encoder, the write token."""

    store: StoreAddress
    collection: str
    backend: str = "torch"
    model: str | None = None  # the encoder's model (checkpoint, repository, served name)
    encoder_options: dict[str, Any] | None = None
    write_token: str | None = None
    images_root: Path | None = None  # where the items' `image` field points


class SearchRequest(BaseModel):
    """A catalog query: a stored item id ("more like this") or, in the multipart form, a
    photo; attribute -> weight (score = sum of weight x cosine); a filter; a page."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "item": "sku-1042",
                    "attributes": {"collar_design": 1.0, "sleeve_length": 0.5},
                    "filter": {"and": [{"category": {"in": ["dress"]}}, {"price": {"lt": 50}}]},
                    "k": 10,
                    "offset": 0,
                    "fields": ["category", "price"],
                }
            ]
        },
    )
    item: str | int | None = None
    attributes: dict[str, float] = Field(min_length=1)
    filter: dict[str, Any] | None = None
    k: int = Field(10, ge=1, le=MAX_PAGE_K)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    fields: list[str] = Field(default_factory=list, max_length=64)


class HitOut(BaseModel):
    id: str | int
    score: float
    scores: dict[str, float]
    fields: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[HitOut]
    offset: int
    k: int


class ErrorOut(BaseModel):
    error: str


def _one_line(error: ValidationError | RequestValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    return f"{where}: {first.get('msg', 'invalid')}"


def _bad(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


class CatalogService:
    """The store, the encoder (opened on the first photo) and one lock around the encoder."""

    def __init__(self, settings: CatalogSettings):
        self.settings = settings
        self.store = CatalogStore.open(settings.store, settings.collection)
        self._encoder = None
        self._lock = threading.Lock()

    def encode(self, blob: bytes):
        """The photo's `[A, D]` vectors through the configured backend."""
        from asen.backends import open_encoder

        if self.settings.model is None:
            raise AsenError("this app has no encoder (--encoder): search by item id only")
        with self._lock:
            if self._encoder is None:
                options = self.settings.encoder_options or {}
                self._encoder = open_encoder(self.settings.backend, self.settings.model, **options)
            return photo_vectors(self._encoder, blob, self.store)

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
        self.store.close()


async def _read_upload(upload: Any, name: str) -> bytes:
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise AsenError(f"the multipart form needs a file field {name!r}")
    blob = await upload.read()
    if not blob:
        raise AsenError(f"the uploaded {name!r} is empty")
    return blob


def _json_field(form: Any, name: str) -> Any:
    raw = form.get(name)
    if not isinstance(raw, str):
        raise AsenError(f"the multipart form needs a text field {name!r} holding JSON")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise AsenError(f"field {name!r} is not JSON ({e.msg} at {e.pos})") from None


async def _search_request(request: Request) -> tuple[SearchRequest, bytes | None]:
    """The validated query and the photo (None for an item query)."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        blob = await _read_upload(form.get("image"), "image")
        raw = _json_field(form, "query")
    elif kind.startswith("application/json"):
        blob = None
        try:
            raw = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AsenError(f"the body is not JSON ({e})") from None
    else:
        raise AsenError("send application/json (an item query) or multipart/form-data (a photo)")
    try:
        query = SearchRequest.model_validate(raw)
    except ValidationError as e:
        raise AsenError(_one_line(e)) from None
    if (query.item is None) == (blob is None):
        raise AsenError("a query is a photo (multipart) or an item id (JSON), one of them")
    return query, blob


def _run_search(service: CatalogService, query: SearchRequest, blob: bytes | None) -> dict:
    vectors = service.encode(blob) if blob is not None else None
    hits = search(
        service.store,
        weights=query.attributes,
        k=query.offset + query.k,
        vectors=vectors,
        item=query.item,
        filter=query.filter,
        fields=query.fields,
    )
    page = [h.to_json() for h in hits[query.offset :]]
    return {"hits": page, "offset": query.offset, "k": query.k}


def _check_token(service: CatalogService, request: Request) -> JSONResponse | None:
    token = service.settings.write_token
    if token is None:
        return None
    given = request.headers.get("authorization", "")
    if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return None
    return _bad("this write needs the header Authorization: Bearer <token>", 401)


def _put_item(service: CatalogService, item: str, blob: bytes, metadata: Any) -> dict:
    if not isinstance(metadata, dict):
        raise AsenError("field 'metadata' must be a JSON object (field -> value)")
    vectors = service.encode(blob)
    row = item_row(service.store, item, metadata, vectors)
    upsert_rows(service.store, [row])
    return {"id": row["id"], "upserted": True}


def _item_image(service: CatalogService, item: str) -> Path:
    from asen.client.app import gallery_file

    store = service.store
    if service.settings.images_root is None or "image" not in store.layout.metadata:
        raise HTTPException(404)
    rows = store.call("get", ids=[item_key(item, store)], output_fields=["image"])
    if not rows:
        raise UnknownItemError(f"unknown item id {item!r} in {store.where}")
    return gallery_file(service.settings.images_root, str(rows[0].get("image") or ""))


def _errors(app: FastAPI) -> None:
    """Every error as JSON `{"error": line}` with its status."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _bad(_one_line(exc))

    @app.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        return _bad(detail if exc.status_code != 404 else "not found", exc.status_code)

    @app.exception_handler(UnknownItemError)
    async def unknown(request: Request, exc: UnknownItemError) -> JSONResponse:
        return _bad(str(exc), 404)

    @app.exception_handler(StoreError)
    async def store(request: Request, exc: StoreError) -> JSONResponse:
        return _bad(str(exc), 503)

    @app.exception_handler(AsenError)
    async def user(request: Request, exc: AsenError) -> JSONResponse:
        return _bad(str(exc))


def _search_body() -> dict:
    """The OpenAPI request body of /api/search: JSON (an item) or multipart (a photo)."""
    schema = SearchRequest.model_json_schema()
    example = schema["examples"][0]
    photo = {k: v for k, v in example.items() if k != "item"}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": schema, "example": example},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "query"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "query": {"type": "string", "description": "SearchRequest JSON, no item"},
                    },
                },
                "example": {"query": json.dumps(photo)},
            },
        },
    }


PUT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "metadata": {"type": "string", "description": "JSON object: field -> value"},
                },
            },
            "example": {"metadata": '{"category": "dress", "price": 39.5}'},
        }
    },
}
ERRORS = {s: {"model": ErrorOut} for s in (400, 401, 404, 413, 503)}


def _routes(app: FastAPI, service: CatalogService) -> None:
    @app.get("/api/health", responses=ERRORS)
    def health() -> dict:
        """The store's state: rows, attributes, fields, index, encoder."""
        return {"status": "ok", **store_stats(service.store)}

    @app.post(
        "/api/search",
        response_model=SearchResponse,
        responses=ERRORS,
        openapi_extra={"requestBody": _search_body()},
    )
    async def api_search(request: Request) -> dict:
        """The top k (after `offset`) by sum of weight x cosine, among items passing the filter."""
        query, blob = await _search_request(request)
        return await run_in_threadpool(_run_search, service, query, blob)

    @app.put("/api/items/{item}", responses=ERRORS, openapi_extra={"requestBody": PUT_BODY})
    async def put_item(item: str, request: Request) -> Response:
        """Embed the photo and upsert the item with its metadata (bearer token if set)."""
        if (denied := _check_token(service, request)) is not None:
            return denied
        form = await request.form(max_files=1, max_fields=4)
        blob = await _read_upload(form.get("image"), "image")
        metadata = _json_field(form, "metadata") if form.get("metadata") else {}
        return JSONResponse(await run_in_threadpool(_put_item, service, item, blob, metadata))

    @app.delete("/api/items/{item}", responses=ERRORS)
    def delete_item(item: str, request: Request) -> Response:
        """Delete the item (bearer token if set); 404 when it is not there."""
        if (denied := _check_token(service, request)) is not None:
            return denied
        if not delete_items(service.store, [item]):
            raise UnknownItemError(f"unknown item id {item!r} in {service.store.where}")
        return JSONResponse({"id": item, "deleted": True})

    @app.get("/api/items/{item}/image", responses=ERRORS)
    def item_image(item: str) -> FileResponse:
        """The item's picture (its `image` field, under the app's --images root)."""
        return FileResponse(_item_image(service, item))


def _page(app: FastAPI, service: CatalogService) -> None:
    @app.get("/", include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    @app.get("/catalog.js", include_in_schema=False)
    def script() -> Response:
        return Response(PAGE_JS, media_type="text/javascript")


def create_catalog_app(
    catalog: CatalogSettings, *, max_upload_bytes: int, body_timeout_s: float
) -> FastAPI:
    """The catalog page and API (connects to the store now: unreachable is an AsenError)."""
    from asen.client.app import FORM_OVERHEAD, BodyLimit, SecurityHeaders

    service = CatalogService(catalog)
    app = FastAPI(
        title="asen catalog",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    _errors(app)
    _routes(app, service)
    _page(app, service)
    app.add_middleware(BodyLimit, limit=max_upload_bytes + FORM_OVERHEAD, timeout_s=body_timeout_s)
    app.add_middleware(SecurityHeaders, csp=CSP)  # the page's own script, fetch to itself
    app.state.catalog = service
    app.router.on_shutdown.append(service.close)
    return app


def exposure_warning(host: str, catalog: CatalogSettings) -> str | None:
    """A warning when the app listens beyond loopback and its writes need no token."""
    if catalog.write_token:
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (
        f"warning: listening on {host} without --write-token: anyone who reaches it can "
        "change and delete catalog items"
    )


def catalog_settings(
    host: str,
    *,
    store: str,
    collection: str,
    token: str | None,
    encoder: str | None,
    backend: str,
    device: str,
    write_token: str | None,
    images: Path | None,
    url: str | None = None,
    warn: Any = print,
) -> CatalogSettings:
    """`asen app --store ...` as CatalogSettings; warns when writes are open beyond loopback."""
    from asen.backends import backend_names
    from asen.catalog.store import parse_store

    if backend not in backend_names():
        raise AsenError(f"--backend {backend!r}: expected one of {', '.join(backend_names())}")
    if images is not None and not images.is_dir():
        raise AsenError(f"--images {images}: folder not found")
    options = {"device": device} if backend in ("torch", "onnx", "trt") else {"url": url}
    settings = CatalogSettings(
        parse_store(store, token), collection, backend, encoder, options, write_token or None,
        images,
    )  # fmt: skip
    if (warning := exposure_warning(host, settings)) is not None:
        warn(warning)
    return settings
