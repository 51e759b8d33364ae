"""`asen bench serve`: short real perf_analyzer sweeps against real servers (an encoder, the
`asen` bytes ensemble, `asen_search`; concurrency and request rate), the server's
statistics per level, and bad input as one line."""

from __future__ import annotations

import csv

import asen.client.perf as perf
import numpy as np
import pytest
from asen.client.perf import RateSweep, Sweep
from asen.client.perf_report import merge_csv
from asen.client.perf_stats import ServerStats, read_level
from asen.client.search import ServedSearch
from asen.client.server import free_port
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app
from asen.data.splits import open_dataset
from tests.client.search_world import serving_search_repo

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


@pytest.fixture(scope="module")
def search_world(repo, synth, tmp_path_factory):
    """A real server with the `asen` ensemble, its encoder and `asen_search`."""
    with serving_search_repo(repo, synth, tmp_path_factory.mktemp("perf-search")) as world:
        yield world


@needs_perf
@pytest.mark.parametrize("model", ["asen", "asen_search"])
def test_every_served_model_gives_table_csv_and_plot(search_world, synth, model, tmp_path):
    out_csv, out_png = tmp_path / "sweep.csv", tmp_path / "sweep.png"
    result = runner.invoke(
        app,
        ["bench", "serve", "--url", search_world["server"].grpc_url, "--model", model]
        + ["--concurrency", "1:2", "--input-data", str(synth), *QUICK]
        + ["--csv", str(out_csv), "--plot", str(out_png)],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out_csv.open()))
    assert sorted(int(r["Concurrency"]) for r in rows) == [1, 2]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = [ln.split() for ln in result.output.splitlines() if ln.strip().startswith("│")]
    figures = [[float(x) for x in ln if x != "│"] for ln in table if ln[1].isdigit()]
    assert [int(f[0]) for f in figures] == [1, 2], result.output
    for _, images_s, _, _, p99, queue, compute, batch in figures:  # server time in latency
        assert images_s > 0 and 0 < compute and queue + compute <= p99, result.output
        assert batch >= 1, result.output


@needs_perf
def test_request_rate_poisson_with_server_statistics(search_world, synth) -> None:
    target = perf.Target(search_world["server"].http_url, "asen_search", "http")
    levels = perf.run_sweep(
        target,
        rates=RateSweep.parse("20:40:20", "poisson"),
        input_data=synth,
        interval_ms=500,
        stability=100,
        latency_threshold_ms=1e-3,  # every level is over it: the sweep stops after the first
    )
    assert [level.request_rate for level in levels] == [20.0]
    level = levels[0]
    assert level.throughput > 0 and 0 < level.compute_ms <= level.p99_ms


@needs_perf
def test_request_rate_and_latency_threshold_on_the_command_line(search_world, tmp_path) -> None:
    out_csv = tmp_path / "rate.csv"
    result = runner.invoke(
        app,
        ["bench", "serve", "--url", search_world["server"].http_url, "--protocol", "http"]
        + ["--model", "asen", "--request-rate", "10:20:10", "--latency-threshold", "0.001"]
        + [*QUICK, "--csv", str(out_csv)],
    )
    assert result.exit_code == 0, result.output
    assert "requests/s" in result.output and "over --latency-threshold" in result.output
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 1 and float(rows[0]["Inferences/Second"]) > 0  # stopped after 10/s


def test_statistics_count_the_requests_sent(search_world, synth) -> None:
    server = search_world["server"]
    dataset = open_dataset(synth)
    image = dataset.eval_entries("test").files[0]
    client = perf._client(perf.Target(server.grpc_url, "asen_search"))
    try:
        before = read_level(client, ("asen_search",))
        with ServedSearch(server.grpc_url) as search:
            for _ in range(3):
                search.search(image.read_bytes(), dataset.names[0], k=2)
        delta = read_level(client, ("asen_search",)) - before
    finally:
        client.close()
    assert delta.requests == 3 and delta.inferences == 3
    assert delta.compute_ms > 0 and np.isfinite(delta.queue_ms)


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
def test_bad_targets_are_one_line(search_world) -> None:
    base = ["bench", "serve", "--url", search_world["server"].grpc_url, *QUICK]
    nowhere = f"127.0.0.1:{free_port()}"
    cases = {
        "unreachable": ["bench", "serve", "--url", nowhere, "--model", "asen_onnx", *QUICK],
        "model nope": [*base, "--model", "nope"],
        "version 7": [*base, "--model", "asen_onnx", "--model-version", "7"],
        "one query per request": [*base, "--model", "asen_search", "--batch-size", "2"],
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
        (["--request-rate", "0"], "--request-rate 0"),
        (["--request-rate", "5", "--request-distribution", "burst"], "burst"),
        (["--request-rate", "5", "--concurrency", "2"], "give one of them"),
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


def test_rate_parsing_csv_merging_and_ensemble_statistics() -> None:
    assert RateSweep.parse("10:40:10", "poisson").levels() == [10.0, 20.0, 30.0, 40.0]
    assert RateSweep.parse("2.5").levels() == [2.5]
    header = "Concurrency,Inferences/Second\n"
    assert merge_csv([header + "1,5\n", header + "2,9\n"]) == header + "1,5\n2,9\n"
    pre = ServerStats(requests=4, inferences=4, executions=4, queue_ns=8, compute_ns=4)
    enc = ServerStats(requests=4, inferences=4, executions=2, queue_ns=4, compute_ns=12)
    both = ServerStats.chain([pre, enc])
    assert (both.queue_ns, both.compute_ns, both.batch_per_execution) == (12, 16, 2.0)
    assert (both - both).queue_ms == 0.0


def test_sweep_parsing() -> None:
    assert Sweep.parse("1:16:1") == Sweep(1, 16, 1)
    assert Sweep.parse("8") == Sweep(8, 8, 1)
    assert Sweep.parse("2:8") == Sweep(2, 8, 1)
    assert str(Sweep.parse("1:16:4")) == "1:16:4"
