"""`asen bench serve`: a short real perf_analyzer sweep against the real server, and bad
input as one line."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

import asen.client.perf as perf
from asen import AsenError
from asen.cli import app
from asen.client.perf import Sweep
from asen.client.server import free_port

runner = CliRunner()


def _have_perf_analyzer() -> bool:
    try:
        perf.find_perf_analyzer()
    except AsenError:
        return False
    return True


needs_perf = pytest.mark.skipif(
    not _have_perf_analyzer(),
    reason="no perf_analyzer (bash scripts/install_perf_analyzer.sh installs it)",
)
QUICK = ["--measurement-interval", "500", "--stability", "100"]


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@needs_perf
def test_sweep_against_the_real_server(server, synth, tmp_path) -> None:
    out_csv, out_png = tmp_path / "sweep.csv", tmp_path / "sweep.png"
    result = runner.invoke(
        app,
        ["bench", "serve", "--url", server.grpc_url, "--model", "asen_onnx"]
        + ["--concurrency", "1:2:1", "--input-data", str(synth), *QUICK]
        + ["--csv", str(out_csv), "--plot", str(out_png)],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out_csv.open()))
    assert sorted(int(r["Concurrency"]) for r in rows) == [1, 2]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    assert {"Server Queue", "Server Compute Infer", "p99 latency"} <= set(rows[0])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "images/s" in result.output


@needs_perf
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_and_batches(server, protocol) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    target = perf.Target(url, "asen_onnx", protocol)
    levels = perf.run_sweep(
        target,
        sweep=Sweep(2, 2),
        batch_size=2,
        shared_memory="system",
        interval_ms=500,
        stability=100,
    )
    assert [level.concurrency for level in levels] == [2]
    assert levels[0].throughput > 0 and levels[0].batch_per_execution >= 2


@needs_perf
def test_bad_targets_are_one_line(server) -> None:
    base = ["bench", "serve", "--url", server.grpc_url, *QUICK]
    nowhere = f"127.0.0.1:{free_port()}"
    cases = {
        "unreachable": ["bench", "serve", "--url", nowhere, "--model", "asen_onnx", *QUICK],
        "model nope": [*base, "--model", "nope"],
        "version 7": [*base, "--model", "asen_onnx", "--model-version", "7"],
        "--model asen_onnx": [*base, "--model", "asen"],  # the bytes ensemble
        "HTTP only": [*base, "--model", "asen_onnx", "--header", "Host:x"],
    }
    for needle, args in cases.items():
        assert needle in one_error_line(runner.invoke(app, args)), needle


def test_bad_arguments_are_one_line(server) -> None:
    base = ["bench", "serve", "--url", server.grpc_url, "--model", "asen_onnx"]
    for args, needle in (
        (["--concurrency", "0"], "--concurrency 0"),
        (["--concurrency", "8:4"], "--concurrency 8:4"),
        (["--concurrency", "x"], "--concurrency x"),
        (["--protocol", "h3"], "--protocol h3"),
        (["--header", "no-colon", "--protocol", "http"], "--header"),
    ):
        assert needle in one_error_line(runner.invoke(app, [*base, *args]))


def test_missing_perf_analyzer_says_how_to_get_it(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(perf.ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(perf, "LOCAL", tmp_path / "perf_analyzer")
    with pytest.raises(AsenError, match="install_perf_analyzer.sh"):
        perf.find_perf_analyzer()
    monkeypatch.setenv(perf.ENV, str(tmp_path / "nothing"))
    with pytest.raises(AsenError, match=perf.ENV):
        perf.find_perf_analyzer()


def test_sweep_parsing() -> None:
    assert Sweep.parse("1:16:1") == Sweep(1, 16, 1)
    assert Sweep.parse("8") == Sweep(8, 8, 1)
    assert Sweep.parse("2:8") == Sweep(2, 8, 1)
    assert str(Sweep.parse("1:16:4")) == "1:16:4"
