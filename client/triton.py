"""`TritonEncoder`: an Encoder (docs/architecture.md, "Backends") over a Triton server.

Tensors go to the encoder model (`<name>_trt` or `<name>_onnx`: the one the `<name>` ensemble
runs); with `send_bytes`, encoded image files go through the ensemble, which decodes them on
the server with the one preprocessing function (`encode_all_files`: through the
all-attributes ensemble `<name>_all`). Work is split into batches of at most the model's
max batch, a bounded number of requests is in flight, and a server that is briefly
unavailable is retried with backoff.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from asen.client.connection import check_protocol, make_client, status_code
from asen.client.shm import SystemShm, check_shared_memory
from asen.export.layout import all_variant
from google.protobuf.json_format import MessageToDict
from tritonclient.utils import InferenceServerException

from asen import AsenError
from asen.data.images import BadImageError
from asen.encoders import Encoder, InputKind, Progress, check_attributes
from asen.model.shape import ModelInfo
from asen.remote import Tls

IMAGE, ATTRIBUTE, OUTPUT, BYTES_INPUT = "image", "attribute", "embedding", "image_bytes"
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
# Retried: the server cannot take the call now (starting, a model loading, a full queue).
# gRPC's own retry policy (service config) would cover gRPC alone and HTTP needs a loop
# anyway, so one loop (`_retrying`) serves both, keyed on the typed status codes.
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, HTTPStatus.SERVICE_UNAVAILABLE})
_BAD_IMAGE = re.compile(re.escape(BYTES_INPUT) + r"\[(\d+)\]: (.*)")


def default_url(protocol: str) -> str:
    return f"127.0.0.1:{DEFAULT_PORTS.get(protocol, 8001)}"


class TritonEncoder(Encoder):
    """Embeds through a Triton server over gRPC (default) or HTTP."""

    backend = "triton"

    def __init__(
        self,
        url: str | None = None,
        model: str = "asen",
        protocol: str = "grpc",
        *,
        send_bytes: bool = False,
        batch_size: int = 64,
        in_flight: int = 4,
        timeout_s: float = 60.0,
        retries: int = 4,
        tls: Tls | None = None,
        headers: Mapping[str, str] | None = None,
        shared_memory: str = "none",
        model_version: str | None = None,
    ):
        """`tls`: connect with TLS (its PEM files, if any); `headers`: sent with every call
        (`Host` over gRPC sets the channel's authority); `shared_memory="system"`: tensors
        travel through system shared memory (the server must be on this host);
        `model_version`: the encoder model's version to run (default: the latest served)."""
        self.url, self.protocol = url or default_url(protocol), check_protocol(protocol)
        self.send_bytes, self.timeout_s, self.retries = send_bytes, timeout_s, retries
        self.tls, self.headers = tls, dict(headers or {})
        self.model_version = str(model_version or "")
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()
        system = check_shared_memory(shared_memory) == "system"
        self._shm = SystemShm(self._client) if system else None
        try:
            if self.model_version and send_bytes:
                raise AsenError(
                    "--model-version picks a version of the encoder model; --send-bytes goes "
                    "through the ensemble, which runs the latest one (drop one of them)"
                )
            self._wait_live()
            self.model, self.config = self._resolve(model)
            self.info = ModelInfo.from_metadata(self.config["params"], f"Triton model {self.model}")
            self.batch_size = max(1, min(batch_size, self.config["max_batch_size"]))
            self.ensemble = model if send_bytes else None
            if send_bytes:
                ensemble = self._model_config(model)
                if ensemble.get("platform") != "ensemble":
                    raise AsenError(f"--send-bytes: Triton model {model} is not the bytes ensemble")
                self.batch_size = min(self.batch_size, ensemble["max_batch_size"])
            is_all = self.config["params"].get("graph") == "all"
            self.all_model = self.model if is_all else self._served_all_model(self.model)
            self.all_ensemble = self._served_all_ensemble(model) if send_bytes else None
        except BaseException:
            self.close()
            raise
        self.in_flight = max(1, in_flight)  # requests in flight (`--concurrency`)
        self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="triton")

    @classmethod
    def open(
        cls,
        model: str,
        *,
        url: str | None = None,
        protocol: str | None = None,
        send_bytes: bool = False,
        batch_size: int = 64,
        tls: Tls | None = None,
        headers: Mapping[str, str] | None = None,
        shared_memory: str = "none",
        model_version: str | None = None,
        concurrency: int | None = None,
    ) -> TritonEncoder:
        """`model`: the served model's name (the `asen` ensemble or an encoder model); the
        options as for the constructor."""
        return cls(
            url,
            model,
            protocol or "grpc",
            send_bytes=send_bytes,
            batch_size=batch_size,
            tls=tls,
            headers=headers,
            shared_memory=shared_memory,
            model_version=model_version,
            in_flight=concurrency or 4,
        )

    @property
    def input_kind(self) -> InputKind:
        return "files" if self.send_bytes else "tensors"

    def _served_all_model(self, model: str) -> str | None:
        """The all-attributes model exported beside `model` (`asen_onnx` ->
        `asen_all_onnx`), when the server has it ready; None otherwise."""
        name = all_variant(model)
        if name is None:
            return None
        client = self._client()
        try:
            if not self._retrying(lambda: client.is_model_ready(name, self.model_version)):
                return None
        except InferenceServerException:
            return None
        config = self._model_config(name, self.model_version)
        return name if config["params"].get("graph") == "all" else None

    def _served_all_ensemble(self, model: str) -> str | None:
        """The all-attributes bytes ensemble: `model` when it runs the all-attributes graph
        (`asen_all`), else the one exported beside it (`asen` -> `asen_all`) when served."""
        if self.all_model == self.model:
            return model
        name = all_variant(model)
        if name is None or self.all_model is None:
            return None
        try:
            config = self._model_config(name)
        except AsenError:
            return None
        return name if config.get("platform") == "ensemble" else None

    @property
    def has_all_graph(self) -> bool:
        return self.all_model is not None

    def encode_all_batch(self, images: np.ndarray) -> np.ndarray:
        """Every attribute in one request to the all-attributes model, when served."""
        if self.all_model is None:
            return super().encode_all_batch(images)
        per_row = len(self.info.attributes) * self.info.dim
        return self._infer(self.all_model, {IMAGE: images}, per_row)

    def identity(self) -> dict[str, str]:
        """The served model's precision (its config says it); Triton does not report the
        checkpoint, so its sha256 stays empty."""
        return {
            "checkpoint_sha256": "",
            "precision": self.config["params"].get("precision", "fp32"),
        }

    # connection --------------------------------------------------------------------------
    def _client(self):
        """gRPC clients are thread-safe (one shared); HTTP ones are per thread."""
        if self.protocol == "grpc" and self._clients:
            return self._clients[0]
        client = getattr(self._local, "client", None)
        if client is None:
            client = make_client(
                self.url,
                self.protocol,
                tls=self.tls,
                headers=self.headers,
                timeout_s=self.timeout_s,
            )
            with self._lock:
                self._clients.append(client)
            self._local.client = client
        return client

    def close(self) -> None:
        """Release the worker threads and connections (an open HTTP connection delays the
        server's shutdown)."""
        if hasattr(self, "_pool"):
            self._pool.shutdown(wait=True)
        if self._shm is not None:
            self._shm.close()
        for client in self._clients:
            client.close()
        self._clients.clear()

    def _retrying(self, call: Callable, what: str = ""):
        """`call()`, retried with backoff while the server is unavailable; `what` ends the
        error message."""
        for attempt in range(self.retries + 1):
            try:
                return call()
            except InferenceServerException as e:
                transient, reason = status_code(e) in _TRANSIENT, e.message() or str(e)
                if not transient:
                    raise
            except TimeoutError:
                raise AsenError(
                    f"Triton at {self.url}: no answer within {self.timeout_s:.0f} s{what}"
                ) from None
            except OSError as e:  # HTTP: refused or reset connection
                reason = e.strerror or str(e) or type(e).__name__
            except http.client.HTTPException as e:  # HTTP: closed (e.g. a TLS-only port)
                reason = str(e) or type(e).__name__
            if attempt < self.retries:
                time.sleep(0.2 * 2**attempt)
        raise AsenError(
            f"Triton at {self.url} ({self.protocol}) is unreachable{what} after "
            f"{self.retries + 1} tries: {reason.splitlines()[0]}"
        )

    def _wait_live(self) -> None:
        def live() -> bool:
            if not self._client().is_server_live():
                unavailable = str(HTTPStatus.SERVICE_UNAVAILABLE.value)
                raise InferenceServerException("server not live", status=unavailable)
            return True

        self._retrying(live, " (is `asen serve` running?)")

    def _served_versions(self, name: str) -> list[str]:
        """The versions of model `name` the server has ready, from its repository index."""
        index = self._retrying(lambda: self._client().get_model_repository_index())
        models = index if self.protocol == "http" else [MessageToDict(m) for m in index.models]
        found = {
            str(m.get("version", ""))
            for m in models
            if m.get("name") == name and m.get("state") == "READY"
        }
        return sorted((v for v in found if v.isdigit()), key=int)

    def _model_config(self, name: str, version: str = "") -> dict:
        client = self._client()
        try:
            if not self._retrying(lambda: client.is_model_ready(name, version)):
                served = self._served_versions(name) if version else []
                if served:
                    raise AsenError(
                        f"Triton at {self.url}: model {name} has no version {version} "
                        f"(served: {', '.join(served)})"
                    )
                what = f"version {version} of model {name}" if version else f"model {name}"
                raise AsenError(f"Triton at {self.url}: {what} is not ready")
            config = self._retrying(lambda: client.get_model_config(name, version))
        except InferenceServerException as e:
            raise AsenError(f"Triton at {self.url}: model {name}: {e.message()}") from None
        if self.protocol == "grpc":
            config = MessageToDict(config.config, preserving_proto_field_name=True)
        config["max_batch_size"] = int(config.get("max_batch_size", 0))
        config["params"] = {
            k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()
        }
        return config

    def _resolve(self, name: str) -> tuple[str, dict]:
        """The tensor model for `name`: the encoder its ensemble runs, or `name` itself."""
        config = self._model_config(name)
        if config.get("platform") == "ensemble":
            name = config["ensemble_scheduling"]["step"][-1]["model_name"]
            config = self._model_config(name, self.model_version)
        elif self.model_version:
            config = self._model_config(name, self.model_version)
        if not any(t["name"] == IMAGE for t in config.get("input", [])):
            raise AsenError(f"Triton model {name} is not an asen encoder (no `{IMAGE}` input)")
        return name, config

    def describe(self) -> str:
        via = f"{self.ensemble} (image bytes)" if self.send_bytes else self.model
        via += f" version {self.model_version}" if self.model_version else ""
        return f"Triton at {self.url} over {self.protocol}: {via}, batches of {self.batch_size}"

    # inference -----------------------------------------------------------------------------
    def _infer(
        self, model: str, feeds: dict[str, np.ndarray], per_row: int | None = None
    ) -> np.ndarray:
        inputs, outputs, read = self._tensors(feeds, per_row or self.info.dim)
        client = self._client()
        options = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

        def call():
            version = "" if model == self.ensemble else self.model_version
            return client.infer(model, inputs, outputs=outputs, model_version=version, **options)

        try:
            result = self._retrying(call, " mid-run (did the server stop?)")
        except InferenceServerException as e:
            if status_code(e) is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise AsenError(
                    f"Triton {model}: no answer within {self.timeout_s:.0f} s"
                ) from None
            message = (e.message() or str(e)).strip()
            bad = _BAD_IMAGE.search(message)
            if bad:
                raise _BadBatchImage(int(bad.group(1)), bad.group(2)) from None
            raise AsenError(f"Triton {model}: {message.splitlines()[0]}") from None
        return read(result)

    def _tensors(self, feeds: dict[str, np.ndarray], per_row: int) -> tuple[list, list, Callable]:
        """(inputs, requested outputs, read(result) -> embeddings) for one request: the
        bytes in the request, or in this thread's shared-memory regions."""
        module = grpcclient if self.protocol == "grpc" else httpclient
        if self._shm is not None:
            rows = len(next(iter(feeds.values())))
            return self._shm.attach(module, feeds, OUTPUT, rows * per_row * 4)
        inputs = []
        for name, array in feeds.items():
            dtype = "BYTES" if array.dtype == object else str(array.dtype).upper()
            tensor = module.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs, [module.InferRequestedOutput(OUTPUT)], lambda r: r.as_numpy(OUTPUT)

    def map_batches(self, fn: Callable[[slice], Any], parts: list[slice]) -> Iterable[Any]:
        """At most `in_flight` batches at a time, results in order."""
        return self._pool.map(fn, parts)

    def encode_batch(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        return self._infer(self.model, {IMAGE: images, ATTRIBUTE: attributes[:, None]})

    def _check_attributes(self, attributes: np.ndarray, n: int) -> np.ndarray:
        attributes = check_attributes(attributes, n, self.info)
        if self.ensemble is None:
            raise AsenError("sending image bytes needs a TritonEncoder with send_bytes=True")
        return attributes

    def _embed_blobs(
        self,
        blobs: list[bytes],
        attributes: np.ndarray | None,
        skip_bad: bool,
        *,
        all_attributes: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """One request through the ensemble (the all-attributes one, without `attributes`,
        with `all_attributes`): (indices embedded, their embeddings, {index: reason} of
        those left out). With `skip_bad` an undecodable image is left out and the rest
        resent; otherwise it raises `_BadBatchImage`."""
        per_row = self.info.dim * (len(self.info.attributes) if all_attributes else 1)
        model = self.all_ensemble if all_attributes else self.ensemble
        rows, bad = np.arange(len(blobs)), {}
        while len(rows):
            feed = {BYTES_INPUT: np.array([blobs[i] for i in rows], dtype=object).reshape(-1, 1)}
            if attributes is not None:
                feed[ATTRIBUTE] = attributes[rows, None]
            try:
                return rows, self._infer(str(model), feed, per_row), bad
            except _BadBatchImage as e:
                if not skip_bad:
                    raise _BadBatchImage(int(rows[e.index]), e.reason) from None
                bad[int(rows[e.index])] = e.reason
                rows = np.delete(rows, e.index)
        return rows, np.zeros((0, per_row), np.float32), bad

    def encode_bytes(
        self, blobs: Sequence[bytes], attributes: np.ndarray, skip_bad: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encoded images and int64 [N] attribute ids, decoded on the server by the ensemble.
        Returns float32 [N,D] embeddings and the mask of images decoded (all True unless
        `skip_bad`; otherwise an undecodable image raises BadImageError with its index)."""
        attributes = self._check_attributes(attributes, len(blobs))

        def chunk(part: slice):
            try:
                rows, emb, _ = self._embed_blobs(list(blobs[part]), attributes[part], skip_bad)
            except _BadBatchImage as e:
                raise BadImageError(f"image {part.start + e.index}: {e.reason}") from None
            return rows + part.start, emb

        return self._gather(chunk, len(blobs))

    def encode_files(
        self,
        files: Sequence[str | Path],
        attributes: Any,
        *,
        skip_bad: bool = False,
        progress: Progress | None = None,
        batch_size: int | None = None,
        workers: int = 2,
    ) -> tuple[np.ndarray, np.ndarray]:
        """With `send_bytes`: `encode_bytes` of the files, read as their batch is sent (the
        server decodes them; errors name the file). Otherwise the base class's: decoded
        here and sent as tensors."""
        if not self.send_bytes:
            return super().encode_files(
                files,
                attributes,
                skip_bad=skip_bad,
                progress=progress,
                batch_size=batch_size,
                workers=workers,
            )
        attributes = self._check_attributes(attributes, len(files))

        def chunk(part: slice):
            blobs = []
            for path in files[part]:
                try:
                    blobs.append(Path(path).read_bytes())
                except OSError as e:
                    raise BadImageError(f"{path}: cannot read image ({e.strerror})") from None
            try:
                rows, emb, _ = self._embed_blobs(blobs, attributes[part], skip_bad)
            except _BadBatchImage as e:
                raise BadImageError(f"{files[part.start + e.index]}: {e.reason}") from None
            return rows + part.start, emb

        return self._gather(chunk, len(files), progress)

    def encode_all_files(
        self, files: Sequence[str | Path], *, progress: Progress | None = None
    ) -> tuple[np.ndarray, list[str]]:
        """With `send_bytes`: every attribute's embedding of each image file, float32
        [N,A,D], through the all-attributes ensemble (`<name>_all`), which decodes the files
        on the server, `in_flight` requests at a time; and per file the reason it was left
        out ("" when embedded). A file that cannot be read or decoded is left out (its rows
        zero) and the rest of its request resent."""
        if self.all_ensemble is None:
            raise AsenError(
                f"Triton at {self.url}: no all-attributes bytes ensemble beside {self.ensemble} "
                "(export with --all-attributes, or drop --send-bytes)"
            )
        count, dim, n = len(self.info.attributes), self.info.dim, len(files)
        size = self.all_batch_size
        parts = [slice(i, min(i + size, n)) for i in range(0, n, size)]

        def chunk(part: slice) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
            blobs, bad = {}, {}
            for i in range(part.start, part.stop):
                try:
                    if not Path(files[i]).is_file():  # the reason a local decode gives
                        bad[i] = f"{files[i]}: image file not found"
                        continue
                    blobs[i] = Path(files[i]).read_bytes()
                except OSError as e:
                    bad[i] = f"{files[i]}: cannot read image ({e.strerror})"
            index = np.array(sorted(blobs), dtype=np.int64)
            rows, emb, failed = self._embed_blobs(
                [blobs[i] for i in index], None, True, all_attributes=True
            )
            bad |= {int(index[r]): f"{files[index[r]]}: {why}" for r, why in failed.items()}
            return index[rows], emb, bad

        out, reasons = np.zeros((n, count, dim), np.float32), [""] * n
        for part, (rows, emb, bad) in zip(parts, self.map_batches(chunk, parts), strict=True):
            out[rows] = emb.reshape(-1, count, dim)
            for i, why in bad.items():
                reasons[i] = why
            if progress:
                progress(part.stop - part.start)
        return out, reasons

    def _gather(
        self, chunk: Callable, n: int, progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run `chunk(slice)` over batches with bounded concurrency; assemble (emb, ok)."""
        out = np.zeros((n, self.info.dim), np.float32)
        ok = np.zeros(n, dtype=bool)
        parts = self.slices(n)
        for part, (rows, emb) in zip(parts, self.map_batches(chunk, parts), strict=True):
            out[rows], ok[rows] = emb, True
            if progress:
                progress(part.stop - part.start)
        return out, ok


class _BadBatchImage(Exception):
    """The server could not decode image `index` of a request."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index, self.reason = index, reason
