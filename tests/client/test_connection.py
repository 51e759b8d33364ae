"""The client against real endpoints: headers on the wire, TLS through a local
TLS-terminating relay, system shared memory, and bad connection options as one line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from asen.client.server import free_port
from asen.client.triton import TritonEncoder
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app
from asen.remote import Tls, parse_headers
from tests.client.relay import Relay, self_signed, tls_context

runner = CliRunner()
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


def batch(n: int, s: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, s, s), dtype=np.uint8), rng.integers(0, 4, n)


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


def url_of(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_headers_reach_the_server(server, protocol) -> None:
    headers = {"X-Asen-Probe": "probe-7f3a9c", "Host": "asen.models.example.com"}
    with Relay(url_of(server, protocol)) as relay:
        with TritonEncoder(relay.url, "asen", protocol, headers=headers) as enc:
            images, attributes = batch(3, enc.info.source_size)
            assert enc.encode(images, attributes).shape == (3, enc.info.dim)
        wire = bytes(relay.sent).lower()
    assert b"x-asen-probe" in wire and b"probe-7f3a9c" in wire
    assert b"asen.models.example.com" in wire  # HTTP Host header, gRPC :authority


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_gives_the_same_embeddings(server, protocol, max_batch) -> None:
    with TritonEncoder(url_of(server, protocol), "asen", protocol) as plain:
        images, attributes = batch(2 * max_batch + 3, plain.info.source_size, seed=4)
        want = plain.encode(images, attributes)
    url = url_of(server, protocol)
    with TritonEncoder(url, "asen", protocol, shared_memory="system", in_flight=3) as enc:
        got = enc.encode(images, attributes)
        regions = enc._client().get_system_shared_memory_status()
        assert regions  # registered while the encoder is open
    np.testing.assert_array_equal(got, want)


@needs_openssl
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_through_a_terminating_proxy(server, tmp_path, protocol) -> None:
    cert, key = self_signed(tmp_path)
    with Relay(url_of(server, protocol), tls=tls_context(cert, key)) as relay:
        with pytest.raises(AsenError, match="unreachable"):  # TLS only
            TritonEncoder(relay.url, "asen", protocol, retries=1)
        tls = Tls(root_certificates=cert)
        with TritonEncoder(relay.url, "asen", protocol, tls=tls) as enc:
            images, attributes = batch(2, enc.info.source_size)
            got = enc.encode(images, attributes)
    with TritonEncoder(url_of(server, protocol), "asen", protocol) as plain:
        np.testing.assert_allclose(got, plain.encode(images, attributes), atol=1e-6)


@needs_openssl
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_wrong_certificate_is_one_line(server, synth, tmp_path, protocol) -> None:
    """In a real process, so that anything gRPC's C core writes to stderr counts too."""
    cert, key = self_signed(tmp_path, "server")
    other, _ = self_signed(tmp_path, "other")
    with Relay(url_of(server, protocol), tls=tls_context(cert, key)) as relay:
        done = subprocess.run(
            [sys.executable, "-c", "from asen.cli import main; main()"]
            + ["eval", "asen", "--backend", "triton", "--data", str(synth)]
            + ["--url", relay.url, "--protocol", protocol, "--ssl"]
            + ["--root-certificates", str(other)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert relay.url in lines[0] and "CERTIFICATE_VERIFY_FAILED" in lines[0]


def test_bad_connection_options_are_one_line(server, synth, tmp_path) -> None:
    base = ["eval", "asen", "--data", str(synth)]
    cases = {
        "--header": base + ["--backend", "triton", "--header", "Host=asen"],
        "--root-certificates": base + ["--backend", "triton", "--root-certificates", "x.pem"],
        str(tmp_path / "missing.pem"): base
        + ["--backend", "triton", "--ssl", "--root-certificates", str(tmp_path / "missing.pem")],
        "--shared-memory": base + ["--backend", "onnx", "--shared-memory", "system"],
    }
    for needle, args in cases.items():
        assert needle in one_error_line(runner.invoke(app, args))
    unreachable = f"127.0.0.1:{free_port()}"
    line = one_error_line(runner.invoke(app, [*base, "--backend", "triton", "--url", unreachable]))
    assert unreachable in line and "unreachable" in line


def test_parse_headers() -> None:
    assert parse_headers(["Host: a.example", "X-K:v:w"]) == {"Host": "a.example", "X-K": "v:w"}
    for bad in ("no-colon", ":v", "a b:c"):
        with pytest.raises(AsenError, match="--header"):
            parse_headers([bad])
