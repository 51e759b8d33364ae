"""The first request after `asen serve` reports ready, against steady ones (small config, CPU,
the bundled Triton, `asen_onnx`), for three exports of one random model: warmup with ONNX
Runtime's default threads (one per core), warmup with one thread per instance
(`--threads 1`), and no warmup (`--no-warmup --threads 1`).

Each start sends the first request after ready, then STEADY more, each after the same pause
(a client that does not flood the server). Times are Triton's own per request (statistics
API: queue and compute, so the client's scheduling is left out). The starts of the three
exports are interleaved. Reported per export: the first request's median over the starts,
the steady median and 90th percentile, the share of steady requests above 1.5x their
median (the tail any one request, first or not, can fall in), and the median over starts
of first / steady median.

    python -m benchmarks.bench_warmup --starts 3 --figures docs/figures/warmup.json
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from asen.client.server import free_ports, start_server
from asen.export.build import export_model
from asen.export.deployment import DeploymentOptions
from asen.export.repository import read_config
from asen.export.warmup import RUNS

from benchmarks import harness
from benchmarks.models import random_checkpoint

MODEL = "asen_onnx"
STEADY = 20
# Every request, the first too, follows the same pause: back to back, ONNX Runtime's threads
# never go idle and the steady figure would be one no first request can meet
PAUSE_S = 0.3
EXPORTS = {
    "warmup, default threads": DeploymentOptions(),
    "warmup, 1 thread": DeploymentOptions(threads=1),
    "no warmup, 1 thread": DeploymentOptions(warmup=False, threads=1),
}


def image_size(repo: Path) -> int:
    """The source size S of MODEL's image input in `repo`."""
    return int(read_config(repo / MODEL / "config.pbtxt").input[0].dims[-1])


def _request(size: int) -> list[grpcclient.InferInput]:
    rng = np.random.default_rng(0)
    image = grpcclient.InferInput("image", [1, 3, size, size], "UINT8")
    image.set_data_from_numpy(rng.integers(0, 256, (1, 3, size, size), dtype=np.uint8))
    attribute = grpcclient.InferInput("attribute", [1, 1], "INT64")
    attribute.set_data_from_numpy(np.zeros((1, 1), np.int64))
    return [image, attribute]


def server_totals(client: grpcclient.InferenceServerClient) -> tuple[int, int]:
    """(successful requests, their total server-side ns) of MODEL so far."""
    stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    success = [s["inference_stats"]["success"] for s in stats]
    return sum(int(s.get("count", 0)) for s in success), sum(int(s.get("ns", 0)) for s in success)


def _one_request_ms(client: grpcclient.InferenceServerClient, size: int) -> tuple[float, float]:
    """(server-side ms, end-to-end ms) of one request, read from the statistics API."""
    count, ns = server_totals(client)
    start = time.perf_counter()
    client.infer(MODEL, _request(size))
    wall_ms = (time.perf_counter() - start) * 1000
    count_after, ns_after = server_totals(client)
    deadline = time.monotonic() + 5  # statistics are recorded as the request is released
    while count_after == count and time.monotonic() < deadline:
        time.sleep(0.01)
        count_after, ns_after = server_totals(client)
    if count_after != count + 1:
        raise RuntimeError(f"{MODEL}: expected one more request in the statistics")
    return (ns_after - ns) / 1e6, wall_ms


def first_and_steady(repo: Path, log: Path, *, size: int, warmup_runs: int) -> dict[str, float]:
    """Serve `repo`; the first request to MODEL after ready, then STEADY more (server-side
    ms; `*_wall` end to end). Checks that Triton counted `warmup_runs` before the first."""
    with start_server(repo, log_file=log, **free_ports()) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        if server_totals(client)[0] != warmup_runs:  # Triton counts the warmup's runs
            raise RuntimeError(f"{MODEL}: expected {warmup_runs} warmup runs before the first")
        server_ms, wall_ms = [], []
        for _ in range(STEADY + 1):
            time.sleep(PAUSE_S)
            server_side, end_to_end = _one_request_ms(client, size)
            server_ms.append(server_side)
            wall_ms.append(end_to_end)
        client.close()
    steady = server_ms[1:]
    middle = statistics.median(steady)
    return {
        "first": round(server_ms[0], 2),
        "steady": round(middle, 2),
        "steady_p90": round(float(np.percentile(steady, 90)), 2),
        "steady_over_1_5x": round(sum(s > 1.5 * middle for s in steady) / len(steady), 3),
        "first_wall": round(wall_ms[0], 2),
        "steady_wall": round(statistics.median(wall_ms[1:]), 2),
    }


def summary(starts: list[dict[str, float]]) -> dict[str, float]:
    """One export's starts in one row: medians over the starts."""
    return {
        "first_ms": harness.median((s["first"] for s in starts), 2),
        "steady_ms": harness.median((s["steady"] for s in starts), 2),
        "steady_p90_ms": harness.median((s["steady_p90"] for s in starts), 2),
        "steady_over_1_5x": harness.median((s["steady_over_1_5x"] for s in starts), 3),
        "first_over_steady": harness.median((s["first"] / s["steady"] for s in starts), 2),
    }


def to_figures(result: dict) -> harness.Figures:
    columns = ["export", "first ms", "steady median ms", "steady p90 ms"]
    columns += ["steady > 1.5x median", "first / steady (median of starts)"]
    rows = [
        [name, r["first_ms"], r["steady_ms"], r["steady_p90_ms"], r["steady_over_1_5x"],
         r["first_over_steady"]]
        for name, r in result["exports"].items()
    ]  # fmt: skip
    notes = [
        f"{result['starts']} starts per export, interleaved; {STEADY} steady requests a start, "
        f"each after a {PAUSE_S} s pause; times server-side (Triton's statistics API)",
        f"load average {result['load_average']} on a shared 2-core machine",
    ]
    return harness.Figures(
        "First request after ready vs steady requests (small config, CPU, asen_onnx)",
        columns,
        rows,
        notes,
    )


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--starts", type=int, default=3, help="server starts per export")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in EXPORTS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = random_checkpoint("small", folder / "small.pt")
        repos = {}
        for i, (name, options) in enumerate(EXPORTS.items()):
            repos[name] = folder / f"repo{i}"
            export_model(checkpoint, repos[name], max_batch=8, deployment=options)
        size = image_size(repos["warmup, 1 thread"])
        for start in range(args.starts):
            for name, options in EXPORTS.items():
                log = folder / f"{start}-{list(EXPORTS).index(name)}.log"
                warmup_runs = RUNS if options.warmup else 0
                runs[name].append(
                    first_and_steady(repos[name], log, size=size, warmup_runs=warmup_runs)
                )
    result = {
        "starts": args.starts,
        "exports": {name: summary(found) for name, found in runs.items()},
        "runs": runs,
        "load_average": harness.load_average(),
    }
    harness.finish(result, args, to_figures, indent=1)


if __name__ == "__main__":
    main()
