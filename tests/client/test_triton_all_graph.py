"""The all-attributes models served by a real Triton: `TritonEncoder.encode_all` runs
`<name>_all_onnx`, the `<name>_all` ensemble takes image bytes, and a catalog embedded
through Triton (requests in flight) equals one embedded with ONNX Runtime."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import tritonclient.grpc as grpcclient
from asen.client.server import free_ports, start_server
from asen.client.triton import TritonEncoder
from asen.export.build import export_model
from asen.export.encoders import OnnxEncoder
from PIL import Image

from asen.catalog.embed import embed_catalog
from asen.catalog.files import open_catalog
from asen.catalog.items import read_items
from asen.catalog.synthetic import write_catalog
from asen.data.images import load_image

from .conftest import MAX_BATCH


@pytest.fixture(scope="module")
def all_repo(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("triton_all") / "models"
    export_model(checkpoint, out, max_batch=MAX_BATCH, all_graph=True)
    return out


@pytest.fixture(scope="module")
def all_server(all_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("log_all") / "tritonserver.log"
    with start_server(all_repo, log_file=log, **free_ports()) as handle:
        yield handle


def test_encode_all_runs_the_served_all_model(all_server, all_repo) -> None:
    local = OnnxEncoder.open(str(all_repo), device="cpu")
    s = local.info.source_size
    images = np.random.default_rng(0).integers(0, 256, (5, 3, s, s), dtype=np.uint8)
    assert {"asen_all", "asen_all_onnx"} <= set(all_server.models)
    with TritonEncoder(all_server.grpc_url, "asen", in_flight=2) as remote:
        assert remote.all_model == "asen_all_onnx" and remote.has_all_graph
        got = remote.encode_all(images)
    count = len(local.info.attributes)
    pairs = local.encode(np.repeat(images, count, axis=0), np.tile(np.arange(count), 5))
    np.testing.assert_allclose(got.reshape(pairs.shape), pairs, atol=1e-5)


def test_the_all_ensemble_takes_image_bytes(all_server, all_repo) -> None:
    local = OnnxEncoder.open(str(all_repo), device="cpu")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 70, 3), np.uint8)).save(
        buffer, "PNG"
    )
    client = grpcclient.InferenceServerClient(all_server.grpc_url.removeprefix("grpc://"))
    data = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
    data.set_data_from_numpy(np.array([[buffer.getvalue()]], dtype=object))
    result = client.infer("asen_all", [data]).as_numpy("embedding")
    expected = local.encode_all(load_image(buffer.getvalue(), local.info.source_size)[None])
    assert result.shape == (1, len(local.info.attributes), local.info.dim)
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_a_catalog_through_triton_equals_onnx_runtime(all_server, all_repo, tmp_path) -> None:
    local = OnnxEncoder.open(str(all_repo), device="cpu")
    table = write_catalog(tmp_path / "shop", items=20, image_size=64)
    items = read_items(table, id_column="sku")
    embed_catalog(local, items, tmp_path / "onnx", images_root=table.parent, workers=0)
    with TritonEncoder.open("asen", url=all_server.grpc_url, concurrency=3) as remote:
        assert remote.in_flight == 3
        embed_catalog(remote, items, tmp_path / "triton", images_root=table.parent, workers=0)
    want, got = open_catalog(tmp_path / "onnx"), open_catalog(tmp_path / "triton")
    assert got.manifest.encoder.graph == "all"
    for column in want.manifest.embedding_columns().values():
        a = np.array(want.read(columns=[column]).column(column).to_pylist())
        b = np.array(got.read(columns=[column]).column(column).to_pylist())
        np.testing.assert_allclose(b, a, atol=1e-5)
    assert got.read(columns=["id"]).column("id").equals(pa.chunked_array([items.ids]))
