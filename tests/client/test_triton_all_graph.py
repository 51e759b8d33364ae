"""The all-attributes models served by a real Triton: `TritonEncoder.encode_all` runs
`<name>_all_onnx`, the `<name>_all` ensemble takes image bytes, and a catalog embedded
through Triton (requests in flight, tensors or image bytes) equals one embedded with ONNX
Runtime, bad images listed and skipped."""

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
from typer.testing import CliRunner

from asen.catalog.embed import embed_catalog
from asen.catalog.files import open_catalog
from asen.catalog.items import read_items
from asen.catalog.synthetic import write_catalog
from asen.cli import app
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


def _cosines(want, got) -> np.ndarray:
    """Per row and attribute, the cosine of two catalogs' embeddings (same rows)."""
    out = []
    for column in want.manifest.embedding_columns().values():
        a = np.array(want.read(columns=[column]).column(column).to_pylist())
        b = np.array(got.read(columns=[column]).column(column).to_pylist())
        out.append((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    return np.concatenate(out)


def test_a_catalog_sent_as_bytes_equals_the_tensor_path(all_server, all_repo, tmp_path) -> None:
    """`send_bytes`: the files go to the `asen_all` ensemble, which decodes them; the
    catalog equals the one decoded here, and a bad image is listed and skipped."""
    table = write_catalog(tmp_path / "shop", items=20, image_size=64)
    (table.parent / "images/000003.png").write_bytes(b"not an image")
    (table.parent / "images/000011.png").unlink()
    items = read_items(table, id_column="sku")
    local = OnnxEncoder.open(str(all_repo), device="cpu")
    common = {"images_root": table.parent, "workers": 0, "chunk_rows": 8}
    embed_catalog(local, items, tmp_path / "tensors", **common)
    with TritonEncoder.open("asen", url=all_server.grpc_url, send_bytes=True) as remote:
        assert remote.input_kind == "files" and remote.all_ensemble == "asen_all"
        embed_catalog(remote, items, tmp_path / "bytes", **common)
    want, got = open_catalog(tmp_path / "tensors"), open_catalog(tmp_path / "bytes")
    assert got.read(columns=["id"]).equals(want.read(columns=["id"]))
    assert got.manifest.rows == want.manifest.rows == 18
    assert got.manifest.chunks == want.manifest.chunks
    assert _cosines(want, got).min() >= 0.9999
    # the same file and reason; the decoder's detail names a stream here, bytes there
    assert [(p["row"], p["reason"].split(" (")[0]) for p in got.problems()] == [
        (p["row"], p["reason"].split(" (")[0]) for p in want.problems()
    ]
    assert [p["row"] for p in got.problems()] == [3, 11]


def test_the_all_ensemble_can_be_named_as_the_model(all_server, tmp_path) -> None:
    table = write_catalog(tmp_path / "shop", items=3, image_size=64)
    files = [table.parent / f"images/{i:06d}.png" for i in range(3)]
    with TritonEncoder.open("asen_all", url=all_server.grpc_url, send_bytes=True) as named:
        assert named.all_ensemble == "asen_all" and named.all_model == "asen_all_onnx"
        direct, reasons = named.encode_all_files([*files, tmp_path / "missing.png"])
    with TritonEncoder.open("asen", url=all_server.grpc_url, send_bytes=True) as derived:
        assert derived.all_ensemble == "asen_all"
        size = derived.info.source_size
        expected = derived.encode_all(np.stack([load_image(f, size) for f in files]))
    assert reasons[:3] == ["", "", ""] and "image file not found" in reasons[3]
    np.testing.assert_allclose(direct[:3], expected, atol=1e-5)


def test_catalog_embed_send_bytes_on_the_command_line(all_server, tmp_path) -> None:
    table = write_catalog(tmp_path / "shop", items=6, image_size=64)
    (table.parent / "images/000002.png").write_bytes(b"GIF89a broken")
    out = tmp_path / "catalog"
    args = [table, "--images", table.parent, "--model", "asen", "--out", out, "--id-column"]
    args += ["sku", "--backend", "triton", "--url", all_server.grpc_url, "--send-bytes"]
    result = CliRunner().invoke(app, ["catalog", "embed", *map(str, args), "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    assert "5 items embedded, 1 skipped" in result.output
    assert "skipped row 2" in result.output and "cannot decode image" in result.output
    assert open_catalog(out).manifest.rows == 5
