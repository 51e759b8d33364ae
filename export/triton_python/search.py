"""Triton Python-backend model `asen_search` (copied to `asen_search/<v>/model.py` by
`asen index --repo`): one query per request -> the top k gallery items for one attribute.

Inputs: `image_bytes` (an encoded image) or `image` (uint8 [3,S,S]), `attribute` (a name or
an id, as a string), `k`, optional `nprobe`. Outputs: `ids` (image ids), `scores`, `values`,
`keys` (the gallery's item keys: image paths), `is_query`. The queries of one execution are
embedded in one call of the encoder model through business-logic scripting, so they batch
there with everyone else's requests. A bad query fails alone with INVALID_ARGUMENT and one
line; at load, a gallery made by another encoder than the repository's is refused."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from asen.export.search_model import INDEX_DIR, encoder_identity, encoder_mismatch

    from asen import AsenError
    from asen.data.images import BadImageError, load_image
    from asen.search import SearchIndex, attribute_id
except ImportError as e:
    raise ImportError(
        f"{e}: the Python backend's interpreter ({sys.executable}) cannot import asen; "
        "install asen into it or start the server with `asen serve`"
    ) from e


_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-f]+>")  # PIL names the BytesIO


class BadQuery(Exception):
    """A query the model cannot answer; the message goes back to the caller."""


@dataclass
class Query:
    slot: int  # position of the request in this execution
    pixels: np.ndarray
    attribute: int
    k: int
    nprobe: int | None


def _error(message: str, invalid: bool = True):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid else None
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


def _scalar(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)
    if len(value) != 1:
        raise BadQuery(f"{name}: one query per request (got {len(value)} values)")
    return value[0]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.encoder = params["encoder_model"]
        self.encoder_batch = max(1, int(params["encoder_max_batch"]))
        self.size = int(params["source_size"])
        self.max_k, self.max_bytes = int(params["max_k"]), int(params["max_image_bytes"])
        here = Path(args["model_repository"])
        self.index = SearchIndex.load(here / args["model_version"] / INDEX_DIR)
        problem = encoder_mismatch(
            self.index.manifest.get("encoder"), encoder_identity(here.parent, self.encoder)
        )
        if problem:
            raise AsenError(f"{here.name} version {args['model_version']}: {problem}")
        nlist = [n for n in self.index.manifest.get("nlist") or [] if n]
        self.max_nprobe = max(nlist, default=1)
        for a, count in enumerate(self.index.manifest["counts"]):
            if count:  # read every attribute's index now, not on its first query
                self.index.search(np.zeros(self.index.dim, np.float32), a, 1)

    def _pixels(self, request) -> np.ndarray:
        blob = _scalar(request, "image_bytes")
        tensor = pb_utils.get_input_tensor_by_name(request, "image")
        if (blob is None) == (tensor is None):
            raise BadQuery("send exactly one of image_bytes (an encoded image) or image (uint8)")
        if tensor is not None:
            pixels = tensor.as_numpy()
            if pixels.shape != (1, 3, self.size, self.size):
                raise BadQuery(f"image: expected [1,3,{self.size},{self.size}], got {pixels.shape}")
            return pixels[0]
        if len(blob) > self.max_bytes:
            raise BadQuery(f"image_bytes: {len(blob)} bytes, over the {self.max_bytes}-byte limit")
        try:
            return load_image(bytes(blob), self.size)
        except BadImageError as e:
            reason = _OBJECT_REPR.sub("", str(e).removeprefix("<bytes>: "))
            raise BadQuery(f"image_bytes: {reason}") from None

    def _parse(self, slot: int, request) -> Query:
        name = _scalar(request, "attribute")
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        try:
            attribute = attribute_id(name.strip(), self.index.names)
        except AsenError as e:
            raise BadQuery(str(e)) from None
        if not self.index.manifest["counts"][attribute]:
            raise BadQuery(f"the gallery holds no items for '{self.index.names[attribute]}'")
        k = int(_scalar(request, "k"))
        if not 1 <= k <= self.max_k:
            raise BadQuery(f"k {k} out of range (1..{self.max_k})")
        nprobe = _scalar(request, "nprobe")
        if self.index.manifest["kind"] == "flat":
            nprobe = None  # exact search reads every item: nothing to probe
        if nprobe is not None and not 1 <= int(nprobe) <= self.max_nprobe:
            raise BadQuery(f"nprobe {int(nprobe)} out of range (1..{self.max_nprobe})")
        nprobe = None if nprobe is None else int(nprobe)
        return Query(slot, self._pixels(request), attribute, k, nprobe)

    def _embed(self, queries: list[Query]) -> np.ndarray:
        """Embed the queries through the encoder model, in batches of its max batch."""
        out = []
        for start in range(0, len(queries), self.encoder_batch):
            part = queries[start : start + self.encoder_batch]
            images = np.stack([q.pixels for q in part])
            attributes = np.asarray([[q.attribute] for q in part], dtype=np.int64)
            response = pb_utils.InferenceRequest(
                model_name=self.encoder,
                requested_output_names=["embedding"],
                inputs=[pb_utils.Tensor("image", images), pb_utils.Tensor("attribute", attributes)],
            ).exec()
            if response.has_error():
                raise RuntimeError(f"encoder {self.encoder}: {response.error().message()}")
            out.append(pb_utils.get_output_tensor_by_name(response, "embedding").as_numpy())
        return np.concatenate(out)

    def _answer(self, query: Query, embedding: np.ndarray):
        hits = self.index.search(embedding, query.attribute, query.k, query.nprobe)
        tensors = {
            "ids": np.asarray([[h.image_id for h in hits]], dtype=np.int64),
            "scores": np.asarray([[h.score for h in hits]], dtype=np.float32),
            "values": np.asarray([[h.value for h in hits]], dtype=np.int64),
            "keys": np.asarray([[h.path.encode() for h in hits]], dtype=object),
            "is_query": np.asarray([[h.is_query for h in hits]], dtype=bool),
        }
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in tensors.items()])

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        queries = []
        for slot, request in enumerate(requests):
            try:
                queries.append(self._parse(slot, request))
            except BadQuery as e:
                responses[slot] = _error(str(e))
            except Exception as e:  # noqa: BLE001 - a fault in one query fails it alone
                responses[slot] = _error(f"cannot read the query ({type(e).__name__})", False)
        if queries:
            try:
                embeddings = self._embed(queries)
            except RuntimeError as e:
                for q in queries:
                    responses[q.slot] = _error(str(e), invalid=False)
                return responses
            for query, embedding in zip(queries, embeddings, strict=True):
                responses[query.slot] = self._answer(query, embedding)
        return responses
