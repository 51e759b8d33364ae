"""TritonEncoder against a real tritonserver: parity with ONNX Runtime and PyTorch, the bytes
path through the ensemble, and bad input that fails alone while the server keeps serving."""

from __future__ import annotations

import io
import shutil
import threading
import time
from http import HTTPStatus

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from asen.client.connection import status_code
from asen.client.server import free_port, start_server
from asen.client.triton import TritonEncoder
from asen.export.encoders import OnnxEncoder
from asen.export.layout import artifact_path
from asen.export.onnx import physical_cores
from asen.export.repository import read_config, write_config
from PIL import Image
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app
from asen.data.images import BadImageError, load_image
from asen.data.splits import open_dataset
from asen.encoders import TorchEncoder
from asen.evaluate import evaluate
from tests.processes import children

runner = CliRunner()


@pytest.fixture(scope="module")
def onnx_encoder(repo) -> OnnxEncoder:
    return OnnxEncoder(artifact_path(repo, "asen", "onnx"), "cpu")


def batch(n: int, s: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, s, s), dtype=np.uint8), rng.integers(0, 4, n)


def jpeg(w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def test_ready_models_and_metadata(server, onnx_encoder, max_batch) -> None:
    assert server.models == ["asen", "asen_onnx", "asen_preprocess"]
    assert server.alive()
    how = {c.model: c.how for c in server.choices}
    assert how["asen"] == "ensemble: asen_preprocess -> asen_onnx"
    assert how["asen_onnx"] in ("onnxruntime backend",) or "ONNX Runtime inside" in how["asen_onnx"]
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with TritonEncoder(url, "asen", protocol) as enc:
            assert enc.model == "asen_onnx" and enc.batch_size == max_batch
            assert enc.info == onnx_encoder.info


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tensor_path_equals_onnx_runtime(server, onnx_encoder, max_batch, protocol) -> None:
    images, attributes = batch(2 * max_batch + 3, onnx_encoder.info.source_size)  # 3 requests
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with TritonEncoder(url, "asen", protocol, in_flight=3) as enc:
        got = enc.encode(images, attributes)
        assert enc.encode(images[:0], attributes[:0]).shape == (0, enc.info.dim)
    want = onnx_encoder.encode(images, attributes)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_map_through_triton_equals_torch(server, checkpoint, synth) -> None:
    torch_enc = TorchEncoder.from_checkpoint(checkpoint, "cpu")
    dataset = open_dataset(synth, torch_enc.info.attributes)
    want = evaluate(torch_enc, dataset, "test", batch_size=16, workers=0)
    for send_bytes in (False, True):
        with TritonEncoder(server.grpc_url, "asen", send_bytes=send_bytes) as enc:
            got = evaluate(enc, dataset, "test", batch_size=16, workers=0)
        assert got.num_queries == want.num_queries
        assert abs(got.overall_map - want.overall_map) < 1e-3
        for name, value in want.per_attribute.items():
            assert abs(got.per_attribute[name] - value) < 1e-3


def test_bytes_path_equals_local_preprocessing(server, onnx_encoder, tmp_path) -> None:
    s = onnx_encoder.info.source_size
    blobs = [jpeg(200, 150, 1), jpeg(90, 300, 2), jpeg(s, s, 3)] * 4  # 12: two requests
    attributes = np.arange(len(blobs)) % 4
    files = []
    for i, blob in enumerate(blobs):
        files.append(tmp_path / f"{i}.jpg")
        files[-1].write_bytes(blob)
    want = onnx_encoder.encode(np.stack([load_image(b, s) for b in blobs]), attributes)
    with TritonEncoder(server.http_url, "asen", "http", send_bytes=True) as enc:
        got, ok = enc.encode_bytes(blobs, attributes)
        assert ok.all()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        got, ok = enc.encode_files(files, attributes)
        assert ok.all()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_embed_cli_tensors_and_bytes_agree(server, synth, tmp_path) -> None:
    out = {}
    for extra in ([], ["--send-bytes"]):
        path = tmp_path / f"emb{len(extra)}.npz"
        args = ["embed", "asen", "--data", synth, "--out", path, "--backend", "triton"]
        args += ["--url", server.grpc_url, "--workers", "0", *extra]
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        out[len(extra)] = np.load(path)
    np.testing.assert_allclose(out[0]["embeddings"], out[1]["embeddings"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out[0]["image_ids"], out[1]["image_ids"])


def test_bad_input_fails_alone(server, onnx_encoder, tmp_path) -> None:
    s = onnx_encoder.info.source_size
    images, attributes = batch(3, s)
    want = onnx_encoder.encode(images, attributes)
    with TritonEncoder(server.grpc_url, "asen", send_bytes=True) as enc:
        with pytest.raises(AsenError, match=r"attribute id 7 out of range \(0\.\.3: collar_design"):
            enc.encode(images, np.array([0, 7, 1]))
        with pytest.raises(AsenError, match=r"images must be uint8 \[B,3,128,128\]"):
            enc.encode(images.astype(np.float32), attributes)
        with pytest.raises(AsenError, match=r"images must be uint8"):
            enc.encode(images[:, :, :64, :64], attributes)
        with pytest.raises(AsenError, match="attribute id -1 out of range"):
            enc.encode_bytes([jpeg(10, 10, 0)], np.array([-1]))
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"this is not an image")
        good = tmp_path / "good.jpg"
        good.write_bytes(jpeg(64, 64, 5))
        with pytest.raises(BadImageError, match=r"broken\.jpg: cannot decode image"):
            enc.encode_files([good, bad, good], np.array([0, 1, 2]))
        emb, ok = enc.encode_files([good, bad, good], np.array([0, 1, 2]), skip_bad=True)
        assert ok.tolist() == [True, False, True]
        np.testing.assert_allclose(emb[0], enc.encode_bytes([good.read_bytes()], [0])[0][0])
        with pytest.raises(BadImageError, match=r"image 1: cannot decode image"):
            enc.encode_bytes([good.read_bytes(), b""], np.array([0, 0]))
        np.testing.assert_allclose(enc.encode(images, attributes), want, atol=1e-5, rtol=0)

    # a client that skips the checks: the server answers each bad request with a clear error
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def infer(image: np.ndarray, attribute: np.ndarray, dtype: str = "UINT8"):
        inputs = [
            grpcclient.InferInput("image", list(image.shape), dtype),
            grpcclient.InferInput("attribute", list(attribute.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(image)
        inputs[1].set_data_from_numpy(attribute)
        return client.infer("asen_onnx", inputs).as_numpy("embedding")

    try:
        with pytest.raises(InferenceServerException, match="attribute id 9 out of range"):
            infer(images, np.array([[0], [9], [1]]))
        with pytest.raises(InferenceServerException, match="unexpected shape for input 'image'"):
            infer(images[:, :, :64, :64].copy(), attributes[:, None])
        with pytest.raises(InferenceServerException, match="expects 'UINT8'"):
            infer(images.astype(np.float32), attributes[:, None], "FP32")
        np.testing.assert_allclose(infer(images, attributes[:, None]), want, atol=1e-5, rtol=0)
    finally:
        client.close()
    assert server.alive()


def test_unreachable_url() -> None:
    url = f"127.0.0.1:{free_port()}"
    for protocol in ("grpc", "http"):
        with pytest.raises(AsenError, match=f"Triton at {url} \\({protocol}\\) is unreachable"):
            TritonEncoder(url, protocol=protocol, retries=1)
    result = runner.invoke(
        app, ["eval", "asen", "--data", ".", "--backend", "triton", "--url", url]
    )
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"error: Triton at {url} (grpc) is unreachable")


def test_unknown_model(server) -> None:
    with pytest.raises(AsenError, match="model nope"):
        TritonEncoder(server.grpc_url, "nope")
    with pytest.raises(AsenError, match="asen_onnx is not the bytes ensemble"):
        TritonEncoder(server.grpc_url, "asen_onnx", send_bytes=True)
    with pytest.raises(AsenError, match="asen_preprocess is not an asen encoder"):
        TritonEncoder(server.grpc_url, "asen_preprocess", protocol="grpc")


def stub_threads(handle, model: str) -> list[int]:
    """Thread counts of the server's Python-backend stub processes running `model`."""
    counts = []
    for proc in children(handle.process.pid):
        try:
            if f"/{model}/1/model.py" in (proc / "cmdline").read_bytes().decode(errors="replace"):
                counts.append(len(list((proc / "task").iterdir())))
        except OSError:
            continue  # it has just ended
    return counts


def test_instances_and_threads_from_the_config(server, repo, onnx_encoder, tmp_path, ports) -> None:
    """Two encoder instances of one ONNX Runtime thread each, set as a user would in
    config.pbtxt (`intra_op_thread_count` is the ONNX Runtime backend's own key): the
    server runs two stubs with no ONNX Runtime thread pool, and serves the same
    embeddings."""
    (default,) = stub_threads(server, "asen_onnx")
    copy = tmp_path / "models"
    shutil.copytree(repo, copy)
    for path in [copy / "asen_onnx" / "config.pbtxt", *copy.glob("asen_onnx/configs/*.pbtxt")]:
        cfg = read_config(path)
        cfg.instance_group[0].count = 2
        cfg.parameters["intra_op_thread_count"].string_value = "1"
        write_config(path, cfg)
    with start_server(copy, log_file=tmp_path / "log", **ports) as handle:
        served = grpcclient.InferenceServerClient(handle.grpc_url).get_model_config("asen_onnx")
        assert served.config.instance_group[0].count == 2
        assert served.config.parameters["intra_op_thread_count"].string_value == "1"
        one_thread = stub_threads(handle, "asen_onnx")
        assert len(one_thread) == 2
        if physical_cores() > 1:  # the default session has a pool of cores - 1 threads
            assert all(n < default for n in one_thread), (one_thread, default)
        images, attributes = batch(5, onnx_encoder.info.source_size)
        with TritonEncoder(handle.grpc_url) as enc:
            got = enc.encode(images, attributes)
    np.testing.assert_allclose(got, onnx_encoder.encode(images, attributes), atol=1e-5)


def float_request(module, source_size: int) -> list:
    """A request the encoder refuses on the server: FP32 images where it takes UINT8."""
    images = np.zeros((1, 3, source_size, source_size), np.float32)
    inputs = [
        module.InferInput("image", list(images.shape), "FP32"),
        module.InferInput("attribute", [1, 1], "INT64"),
    ]
    inputs[0].set_data_from_numpy(images)
    inputs[1].set_data_from_numpy(np.zeros((1, 1), np.int64))
    return inputs


def test_status_codes_are_typed(server, onnx_encoder) -> None:
    """The real server's refusal as gRPC's INVALID_ARGUMENT and HTTP's 400, and a port with
    no server as gRPC's UNAVAILABLE: typed codes from tritonclient's text statuses."""
    wanted = {"grpc": grpc.StatusCode.INVALID_ARGUMENT, "http": HTTPStatus.BAD_REQUEST}
    for module, url, protocol in (
        (grpcclient, server.grpc_url, "grpc"),
        (httpclient, server.http_url, "http"),
    ):
        client = module.InferenceServerClient(url)
        try:
            with pytest.raises(InferenceServerException, match="expects 'UINT8'") as caught:
                client.infer("asen_onnx", float_request(module, onnx_encoder.info.source_size))
        finally:
            client.close()
        assert status_code(caught.value) == wanted[protocol]
    nobody = grpcclient.InferenceServerClient(f"127.0.0.1:{free_port()}")
    with pytest.raises(InferenceServerException) as caught:
        nobody.is_server_live()
    assert status_code(caught.value) is grpc.StatusCode.UNAVAILABLE
    assert status_code(InferenceServerException("raised by a client")) is None


def test_retries_only_what_is_transient(server, onnx_encoder) -> None:
    """UNAVAILABLE (no server at the port) is tried retries + 1 times; the server's
    INVALID_ARGUMENT once, and it is raised as it came."""
    with TritonEncoder(server.grpc_url, retries=2) as enc:
        calls = []
        client = grpcclient.InferenceServerClient(server.grpc_url)
        request = float_request(grpcclient, onnx_encoder.info.source_size)

        def refused_by_the_model():
            calls.append("model")
            return client.infer("asen_onnx", request)

        with pytest.raises(InferenceServerException, match="expects 'UINT8'"):
            enc._retrying(refused_by_the_model)
        assert calls == ["model"]
        nobody = grpcclient.InferenceServerClient(f"127.0.0.1:{free_port()}")

        def unavailable():
            calls.append("nobody")
            return nobody.is_server_live()

        with pytest.raises(AsenError, match="unreachable after 3 tries"):
            enc._retrying(unavailable)
        assert calls == ["model", "nobody", "nobody", "nobody"]
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_client_started_first_waits_for_the_server(repo, ports, tmp_path, protocol) -> None:
    """A TritonEncoder opened before the server listens retries with backoff until it is
    up, then serves (gRPC: UNAVAILABLE; HTTP: refused connections)."""
    port = ports["grpc_port" if protocol == "grpc" else "http_port"]
    opened: list = []

    def open_early() -> None:
        try:
            opened.append(TritonEncoder(f"127.0.0.1:{port}", protocol=protocol, retries=9))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            opened.append(error)

    early = threading.Thread(target=open_early)
    started = time.monotonic()
    early.start()
    with start_server(repo, log_file=tmp_path / "log", **ports):
        up = time.monotonic() - started
        early.join(timeout=120)
        (encoder,) = opened
        assert isinstance(encoder, TritonEncoder), encoder
        with encoder:
            images, attributes = batch(2, encoder.info.source_size)
            assert encoder.encode(images, attributes).shape == (2, encoder.info.dim)
    assert up > 1.0  # the client's first tries met no server
