"""`ServedSearch`: one query to the `asen_search` Triton model (image, attribute, k, nprobe)
-> the same `Hit`s that local search returns. Errors are one line: an unreachable server,
a model that is not served, and the model's own INVALID_ARGUMENT answers."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from asen.client.connection import status_code
from tritonclient.utils import InferenceServerException

from asen import AsenError
from asen.search import Hit

SEARCH_MODEL = "asen_search"
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
OUTPUTS = ("ids", "scores", "values", "keys", "is_query")


class BadQueryError(AsenError):
    """The served model refused the query (INVALID_ARGUMENT): the caller's mistake."""


class ServedSearch:
    """A client of `asen_search` over gRPC (default) or HTTP."""

    def __init__(
        self,
        url: str | None = None,
        model: str = SEARCH_MODEL,
        protocol: str = "grpc",
        timeout_s: float = 30.0,
    ):
        if protocol not in DEFAULT_PORTS:
            raise AsenError(f"--protocol {protocol}: expected grpc or http")
        self.url = url or f"127.0.0.1:{DEFAULT_PORTS[protocol]}"
        self.model, self.protocol, self.timeout_s = model, protocol, timeout_s
        self._module = grpcclient if protocol == "grpc" else httpclient
        if protocol == "grpc":
            self._client = grpcclient.InferenceServerClient(self.url)
        else:
            self._client = httpclient.InferenceServerClient(
                self.url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        try:
            self.params = self._params()
        except BaseException:
            self.close()
            raise
        self.names = self.params["attribute_names"].split(",")
        self.max_k = int(self.params["max_k"])
        self.max_image_bytes = int(self.params["max_image_bytes"])

    def _params(self) -> dict[str, str]:
        try:
            ready = self._client.is_model_ready(self.model)
        except InferenceServerException as e:
            raise AsenError(f"Triton at {self.url} ({self.protocol}): unreachable ({e})") from None
        if not ready:
            raise AsenError(
                f"Triton at {self.url}: model {self.model} is not served "
                "(add it with `asen index GALLERY --out INDEX --data ROOT --repo REPO`)"
            )
        config = self._client.get_model_config(self.model, as_json=True)
        config = config.get("config", config)  # gRPC wraps it, HTTP does not
        return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ServedSearch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _input(self, name: str, array: np.ndarray, dtype: str):
        tensor = self._module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        return tensor

    def search(
        self,
        image: bytes | np.ndarray,
        attribute: str | int,
        k: int = 10,
        nprobe: int | None = None,
    ) -> list[Hit]:
        """The top `k` gallery items for `attribute` (name or id) like `image`: encoded
        image bytes, or uint8 [3,S,S] pixels."""
        if isinstance(image, (bytes, bytearray)):
            inputs = [self._input("image_bytes", np.array([[bytes(image)]], object), "BYTES")]
        else:
            inputs = [self._input("image", np.ascontiguousarray(image, np.uint8)[None], "UINT8")]
        inputs.append(
            self._input("attribute", np.array([[str(attribute).encode()]], object), "BYTES")
        )
        inputs.append(self._input("k", np.array([[k]], np.int32), "INT32"))
        if nprobe is not None:
            inputs.append(self._input("nprobe", np.array([[nprobe]], np.int32), "INT32"))
        outputs = [self._module.InferRequestedOutput(n) for n in OUTPUTS]
        try:
            timeout = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            result = self._client.infer(self.model, inputs, outputs=outputs, **timeout)
        except InferenceServerException as e:
            invalid = status_code(e) in (grpc.StatusCode.INVALID_ARGUMENT, HTTPStatus.BAD_REQUEST)
            raise (BadQueryError if invalid else AsenError)(
                f"{self.model}: {e.message() or e}"
            ) from None
        ids, scores, values, keys, is_query = (result.as_numpy(n)[0] for n in OUTPUTS)
        return [
            Hit(
                rank=rank,
                score=float(scores[i]),
                path=keys[i].decode() if isinstance(keys[i], bytes) else str(keys[i]),
                image_id=int(ids[i]),
                value=int(values[i]),
                is_query=bool(is_query[i]),
            )
            for rank, i in enumerate(range(len(ids)), start=1)
        ]


def served_search(
    image: Path,
    attr: str,
    *,
    top: int,
    nprobe: int | None,
    url: str | None,
    protocol: str | None,
    model: str | None,
) -> tuple[list, str]:
    """`asen search --backend triton` without --index: one query to the served asen_search
    model; returns (hits, attribute name)."""
    from asen.search import attribute_id

    if not image.is_file():
        raise AsenError(f"{image}: no such image file")
    with ServedSearch(url, model or SEARCH_MODEL, protocol or "grpc") as served:
        name = served.names[attribute_id(attr, served.names)]
        return served.search(image.read_bytes(), name, top, nprobe), name
