"""The catalog store: one `--store` URI, the Milvus collection layout and the encoder
identity it records (docs/catalog-store.md, docs/architecture.md "Catalog store").

Layout: one row per item. The primary key `id` is the item id; the metadata columns are
scalar fields; the per-attribute unit vectors are concatenated in model order into one
FLOAT_VECTOR field `vec` of dim `A * D` (Milvus Standalone and Distributed allow four
vector fields per collection by default, and FashionAI has eight attributes). The inner product
of `vec` with a query holding `w_a * q_a` in attribute a's block (zeros elsewhere) is
exactly `sum_a w_a * cos_a`, so one search ranks by the weighted score.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from asen import AsenError

STORE_FORMAT = "asen-catalog-store/1"
DEFAULT_COLLECTION = "asen_catalog"
ID_FIELD = "id"
VECTOR_FIELD = "vec"
MAX_ID_LENGTH = 512
MAX_STRING_LENGTH = 65535
DEFAULT_PORT = 19530
NOT_LOADED = 101  # Milvus's error code for a collection not loaded
INDEX_KINDS = ("flat", "ivf", "hnsw")
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
#: Parquet (pyarrow) type strings -> the Milvus scalar type names they become.
SCALAR_TYPES = {
    "string": "VARCHAR",
    "large_string": "VARCHAR",
    "bool": "BOOL",
    "int8": "INT64",
    "int16": "INT64",
    "int32": "INT64",
    "int64": "INT64",
    "uint8": "INT64",
    "uint16": "INT64",
    "uint32": "INT64",
    "halffloat": "DOUBLE",
    "float": "DOUBLE",
    "double": "DOUBLE",
}
INDEX_PARAMS = {
    "flat": ("FLAT", {}),
    "ivf": ("IVF_FLAT", {"nlist": 128}),
    "hnsw": ("HNSW", {"M": 16, "efConstruction": 200}),
}


class StoreError(AsenError):
    """The store failed or cannot be reached (not the user's mistake: HTTP 503)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StoreAddress:
    """Where the store is: a Milvus Lite `.db` path, or a server URI with its token."""

    uri: str
    token: str | None = None

    @property
    def is_lite_file(self) -> bool:
        return not self.uri.startswith(("http://", "https://"))

    def __str__(self) -> str:  # never shows the token
        return self.uri


def parse_store(store: str, token: str | None = None) -> StoreAddress:
    """`--store`: a path ending `.db` is a Milvus Lite file (a folder, made on first use);
    `http(s)://[TOKEN@]host[:port]` is a Milvus server (token also from `--token`)."""
    store = store.strip()
    if store.startswith(("http://", "https://")):
        parts = urlsplit(store)
        if not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise AsenError(f"--store {store!r}: expected http(s)://[TOKEN@]host[:port]")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise AsenError(f"--store {store!r}: the port is not a number") from None
        in_uri = unquote(parts.netloc.rpartition("@")[0]) if "@" in parts.netloc else None
        if in_uri and token and in_uri != token:
            raise AsenError("--store carries a token and --token gives another; give one")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return StoreAddress(f"{parts.scheme}://{host}:{port}", token or in_uri or None)
    if "://" in store:
        raise AsenError(f"--store {store!r}: only http(s):// servers or a .db path are stores")
    path = Path(store).expanduser()
    if path.suffix != ".db":
        raise AsenError(f"--store {store}: a Milvus Lite store is a path ending in .db")
    if not path.parent.is_dir():
        raise AsenError(f"--store {store}: folder {path.parent} does not exist")
    if token:
        raise AsenError("--token applies to a Milvus server, not a Milvus Lite file")
    return StoreAddress(str(path.resolve()))


def identity_matches(recorded: dict, given: dict) -> bool:
    """Same vector space: the same checkpoint sha256 and precision (the version and the
    graph are recorded, not compared)."""
    keys = ("checkpoint_sha256", "precision")
    return all(recorded.get(k) == given.get(k) for k in keys)


def describe_identity(identity: dict) -> str:
    sha = str(identity.get("checkpoint_sha256") or "?")[:12]
    return f"checkpoint {sha} {identity.get('precision', '?')}"


@dataclass
class StoreLayout:
    """What a collection holds, recorded in its properties and checked on every use."""

    attributes: list[str]
    dim: int
    id_type: str  # "string" or "int64"
    metadata: dict[str, str]  # field -> Parquet type string
    encoder: dict[str, Any]  # the encoder identity (EncoderIdentity's JSON)
    index: str = "flat"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def vector_dim(self) -> int:
        return len(self.attributes) * self.dim

    def field_kind(self, name: str) -> str:
        """The Milvus scalar type of a metadata field (VARCHAR, INT64, DOUBLE, BOOL)."""
        return SCALAR_TYPES[self.metadata[name]]

    def kinds(self) -> dict[str, str]:
        """Metadata field -> Milvus scalar type (what a catalog must match to be written)."""
        return {name: SCALAR_TYPES.get(kind, kind) for name, kind in self.metadata.items()}

    def to_properties(self) -> dict[str, str]:
        return {
            "asen.format": STORE_FORMAT,
            "asen.attributes": json.dumps(self.attributes),
            "asen.dim": str(self.dim),
            "asen.id_type": self.id_type,
            "asen.metadata": json.dumps(self.metadata),
            "asen.encoder": json.dumps(self.encoder, sort_keys=True),
            "asen.index": self.index,
        }

    @classmethod
    def from_properties(cls, props: dict[str, str], where: str) -> StoreLayout:
        if props.get("asen.format") != STORE_FORMAT:
            raise AsenError(f"{where}: not an asen catalog collection ({STORE_FORMAT})")
        try:
            return cls(
                attributes=json.loads(props["asen.attributes"]),
                dim=int(props["asen.dim"]),
                id_type=props["asen.id_type"],
                metadata=json.loads(props["asen.metadata"]),
                encoder=json.loads(props["asen.encoder"]),
                index=props.get("asen.index", "flat"),
            )
        except (KeyError, ValueError) as e:
            raise AsenError(f"{where}: damaged asen catalog properties ({e})") from None

    def check_fields(self) -> None:
        """Metadata columns must be Milvus field names of a supported scalar type."""
        if self.id_type not in ("string", "int64"):
            raise AsenError(f"catalog id type {self.id_type!r}: expected string or int64")
        for name, kind in self.metadata.items():
            if not FIELD_NAME.match(name) or name in (ID_FIELD, VECTOR_FIELD):
                raise AsenError(f"metadata column {name!r}: not usable as a store field name")
            if kind not in SCALAR_TYPES:
                raise AsenError(
                    f"metadata column {name!r} has type {kind}; the store takes "
                    "strings, integers, floating point and bool"
                )

    def check_same(self, other: StoreLayout, where: str) -> None:
        """Refuse a catalog that does not fit this collection, in one line."""
        if not identity_matches(self.encoder, other.encoder):
            raise AsenError(
                f"{where} holds vectors of another encoder ({describe_identity(self.encoder)}"
                f"), not {describe_identity(other.encoder)}"
            )
        mine = (self.attributes, self.dim, self.id_type, self.kinds())
        theirs = (other.attributes, other.dim, other.id_type, other.kinds())
        if mine != theirs:
            raise AsenError(
                f"{where} has attributes {self.attributes} dim {self.dim} id {self.id_type} "
                f"fields {self.metadata}; the catalog has {other.attributes} dim "
                f"{other.dim} id {other.id_type} fields {other.metadata}"
            )


def _milvus_error(e: Exception) -> str:
    """The message of a pymilvus exception, on one line."""
    message = getattr(e, "message", None) or str(e)
    return " ".join(str(message).split())


def connect(address: StoreAddress, *, timeout: float = 10.0) -> Any:
    """A MilvusClient on the store; an unreachable one is one AsenError naming it."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # errors become AsenErrors
    options: dict[str, Any] = {"timeout": timeout, "dedicated": True}  # own channel
    if address.token:
        options["token"] = address.token
    try:
        return MilvusClient(address.uri, **options)
    except (MilvusException, OSError) as e:
        raise StoreError(f"store {address} cannot be reached ({_milvus_error(e)})") from None


def _schema(client: Any, layout: StoreLayout) -> Any:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    if layout.id_type == "int64":
        schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
    else:
        schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
    for name in layout.metadata:
        kind = getattr(DataType, layout.field_kind(name))
        extra = {"max_length": MAX_STRING_LENGTH} if kind == DataType.VARCHAR else {}
        schema.add_field(name, kind, nullable=True, **extra)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=layout.vector_dim)
    return schema


def _index_params(client: Any, index: str) -> Any:
    """Milvus index parameters of the vector field for index kind `index`."""
    kind, params = INDEX_PARAMS[index]
    prepared = client.prepare_index_params()
    prepared.add_index(VECTOR_FIELD, index_type=kind, metric_type="IP", params=params)
    return prepared


class CatalogStore:
    """One catalog collection in a Milvus store, with its recorded layout."""

    def __init__(self, client: Any, address: StoreAddress, collection: str, layout: StoreLayout):
        self.client, self.address, self.collection, self.layout = (
            client,
            address,
            collection,
            layout,
        )

    @property
    def where(self) -> str:
        return f"collection {self.collection!r} in {self.address}"

    @classmethod
    def open(cls, address: StoreAddress, collection: str = DEFAULT_COLLECTION) -> CatalogStore:
        """An existing catalog collection; a missing or foreign one is one AsenError."""
        client = connect(address)
        where = f"collection {collection!r} in {address}"
        if not call(client.has_collection, collection, where=str(address)):
            client.close()
            raise AsenError(f"no {where} (create it with `asen catalog load`)")
        props = call(client.describe_collection, collection, where=where).get("properties", {})
        layout = StoreLayout.from_properties(props, where)
        call(client.load_collection, collection, where=where)  # no-op when loaded
        return cls(client, address, collection, layout)

    @classmethod
    def create_or_open(
        cls, address: StoreAddress, collection: str, layout: StoreLayout
    ) -> CatalogStore:
        """The collection for `layout`: created when absent, else checked to hold the same
        encoder, attributes and fields (another encoder's catalog is refused)."""
        layout.check_fields()
        client = connect(address)
        if call(client.has_collection, collection, where=str(address)):
            store = cls.open(address, collection)
            client.close()
            store.layout.check_same(layout, store.where)
            store.ensure_index()
            return store
        call(
            client.create_collection,
            collection,
            schema=_schema(client, layout),
            index_params=_index_params(client, layout.index),
            consistency_level="Strong",
            properties=layout.to_properties(),
            where=str(address),
        )
        return cls(client, address, collection, layout)

    def ensure_index(self) -> None:
        """Create the vector index when the collection has none: creating a collection with
        its index is two steps in Milvus, and a stop signal or a crash between them leaves a
        collection that a rerun of the load must finish."""
        try:
            if self.call("describe_index", index_name=VECTOR_FIELD):
                return
        except StoreError:  # a Milvus server says "index not found"; Milvus Lite says None
            pass
        index = _index_params(self.client, self.layout.index)
        call(self.client.create_index, self.collection, index, where=self.where)
        self.call("load_collection")

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`client.<method>(collection, ...)`, errors as StoreError. A collection that a
        restarted Milvus Lite server has not loaded yet is loaded and the call repeated."""
        fn = getattr(self.client, method)
        try:
            return call(fn, self.collection, *args, where=self.where, **kwargs)
        except StoreError as e:
            if e.code != NOT_LOADED:
                raise
        call(self.client.load_collection, self.collection, where=self.where)
        return call(fn, self.collection, *args, where=self.where, **kwargs)

    def check_encoder(self, identity: dict) -> None:
        """Refuse vectors of another encoder than the one the collection records."""
        if not identity_matches(self.layout.encoder, identity):
            raise AsenError(
                f"{self.where} holds vectors of another encoder "
                f"({describe_identity(self.layout.encoder)}), not this one "
                f"({describe_identity(identity)})"
            )

    def wait_indexed(self, timeout_s: float = 3600.0) -> None:
        """Wait until Milvus has indexed every row (Milvus Lite builds segment indexes in the
        background after a flush; until then a search scans without the index)."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.call("describe_index", index_name=VECTOR_FIELD)
            if not state:
                raise StoreError(f"{self.where}: {self.collection} has no vector index")
            if int(state.get("pending_index_rows", 0)) == 0 and int(
                state.get("indexed_rows", 0)
            ) >= int(state.get("total_rows", 0)):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"{self.where}: index not built after {timeout_s:.0f} s")
            time.sleep(0.2)

    def count(self) -> int:
        rows = self.call("query", filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> CatalogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call(fn: Any, *args: Any, where: str, **kwargs: Any) -> Any:
    """Run one pymilvus call; its failure is one AsenError naming the store."""
    from pymilvus.exceptions import MilvusException

    try:
        return fn(*args, **kwargs)
    except MilvusException as e:
        raise StoreError(f"{where}: {_milvus_error(e)}", getattr(e, "code", None)) from None
    except KeyboardInterrupt:  # a stop signal (asen.signals) during the call
        _quiet_lite_server()
        raise


def _quiet_lite_server() -> None:
    """The command is stopping: Milvus Lite's in-process server (of a `.db` store) may still
    run the call it was in, and fail as Python exits beneath it (`cannot schedule new futures
    after interpreter shutdown`), logging a traceback. That failure is the stop's own; the
    store is left as an interrupted write leaves it (a rerun finishes it), so it goes unsaid."""
    logging.getLogger("milvus_lite").setLevel(logging.CRITICAL + 1)
