"""Load on a Triton-served model: N concurrent clients for a bounded time (tensor path),
with the encoder's dynamic batching on and off, and off with two single-thread instances
(three servers, one config each), and direct ONNX Runtime at batch 1, N and 32 in the same
run. The scenarios run in interleaved slices, so that other activity on a shared machine
slows them alike; the on/off ratio is given over the whole run and as the median of the
slices. `mean_executed_batch` is images per model execution, from Triton's statistics.

    python benchmarks/bench_triton.py [--config small] [--checkpoint best.pt] [--duration 15]
        [--rounds 5] [--concurrency 8] [--soak 60]

Prints one JSON object: throughput (images/s), p50/p99 latency (ms) and errors per scenario.
Targets (issue 4): batching on >= 1.5x off at concurrency 8; the best Triton throughput
>= 0.7x direct ONNX Runtime at batch 32; the soak (concurrency 16) ends with zero errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from models import CONFIGS, random_model

from asen.checkpoint import atomic_save, make_checkpoint
from client.server import free_port, start_server
from export.build import export_model
from export.encoders import OnnxEncoder
from export.layout import artifact_path, read_sidecar
from export.repository import read_config


def make_repo(root: Path, config: str, checkpoint: Path | None) -> Path:
    """Export `checkpoint` (or a random stage-2 model of `config`) into a fresh repository."""
    if checkpoint is None:
        checkpoint = root / "model.pt"
        model, cfg, attributes = random_model(config)
        atomic_save(make_checkpoint(model, cfg, attributes), checkpoint)
    repo = root / "models"
    export_model(checkpoint, repo)
    return repo


def variant(repo: Path, out: Path, instances: int = 1, threads: int = 0) -> Path:
    """A copy of `repo` whose encoder configs have no dynamic batcher, and `instances`
    instances of `threads` ONNX Runtime threads each (0: one per core)."""
    shutil.copytree(repo, out, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [*out.glob("*_onnx/config.pbtxt"), *out.glob("*_onnx/configs/*.pbtxt")]:
        cfg = read_config(path)
        cfg.ClearField("dynamic_batching")
        cfg.instance_group[0].count = instances
        cfg.parameters["intra_op_thread_count"].string_value = str(threads)
        path.write_text(text_format.MessageToString(cfg))
    return out


def inputs(s: int, batch: int, seed: int) -> list[grpcclient.InferInput]:
    rng = np.random.default_rng(seed)
    image = grpcclient.InferInput("image", [batch, 3, s, s], "UINT8")
    image.set_data_from_numpy(rng.integers(0, 256, (batch, 3, s, s), dtype=np.uint8))
    attribute = grpcclient.InferInput("attribute", [batch, 1], "INT64")
    attribute.set_data_from_numpy(rng.integers(0, 4, (batch, 1)).astype(np.int64))
    return [image, attribute]


class Load:
    """One load scenario, measured over several slices of time (interleaved with others, so
    that background activity on a shared machine hits every scenario alike)."""

    def __init__(self, url: str, model: str, s: int, concurrency: int, batch: int):
        self.url, self.model, self.concurrency, self.batch = url, model, concurrency, batch
        self.requests = [inputs(s, batch, k) for k in range(concurrency)]
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.seconds = 0.0
        self.rounds: list[float] = []  # throughput of each slice (images/s)
        self.served = self.executions = 0

    def _counts(self, client: grpcclient.InferenceServerClient) -> tuple[int, int]:
        """Requests served and model executions so far, by the server's own statistics."""
        stats = client.get_inference_statistics(self.model, as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    def run(self, seconds: float) -> None:
        """`concurrency` clients, each sending one request after the other for `seconds`."""
        client = grpcclient.InferenceServerClient(self.url)
        for _ in range(2):  # warm-up
            client.infer(self.model, self.requests[0])
        lock = threading.Lock()
        served, executions = self._counts(client)
        done = len(self.latencies)
        start = time.perf_counter()
        stop = start + seconds

        def worker(k: int) -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    client.infer(self.model, self.requests[k], client_timeout=60)
                    with lock:
                        self.latencies.append(time.perf_counter() - t)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        self.errors.append(str(e).splitlines()[0])

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(self.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        self.rounds.append((len(self.latencies) - done) * self.batch / elapsed)
        served_now, executions_now = self._counts(client)
        self.served += served_now - served
        self.executions += executions_now - executions
        client.close()

    def report(self) -> dict:
        ms = np.array(self.latencies) * 1000
        return {
            "concurrency": self.concurrency,
            "batch": self.batch,
            "seconds": round(self.seconds, 1),
            "requests": len(ms),
            "throughput_img_s": round(len(ms) * self.batch / self.seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "mean_executed_batch": round(self.served / max(self.executions, 1), 2),
            "errors": len(self.errors),
            **({"first_error": self.errors[0]} if self.errors else {}),
        }


class Direct:
    """ONNX Runtime in this process at batch `batch`: the reference throughput."""

    def __init__(self, repo: Path, batch: int):
        self.encoder = OnnxEncoder(artifact_path(repo, "asen", "onnx"), "cpu", batch_size=batch)
        s, rng = self.encoder.info.source_size, np.random.default_rng(0)
        self.images = rng.integers(0, 256, (batch, 3, s, s), dtype=np.uint8)
        self.attributes = rng.integers(0, 4, batch).astype(np.int64)
        self.encoder.encode(self.images, self.attributes)
        self.batch, self.images_done, self.seconds = batch, 0, 0.0

    def run(self, seconds: float) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.encoder.encode(self.images, self.attributes)
            self.images_done += self.batch
        self.seconds += time.perf_counter() - start

    def report(self) -> dict:
        return {
            "batch": self.batch,
            "seconds": round(self.seconds, 1),
            "throughput_img_s": round(self.images_done / self.seconds, 1),
        }


def serve(repo: Path, log: Path):
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    return start_server(repo, log_file=log, **ports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--checkpoint", type=Path, help="serve this checkpoint's model instead")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per scenario")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved slices per scenario")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--soak", type=float, default=0.0, help="seconds at concurrency 16")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    c, load_before = args.concurrency, os.getloadavg()[0]
    try:
        repo = make_repo(root, args.config, args.checkpoint)
        s = int(read_sidecar(artifact_path(repo, "asen", "onnx"))["source_size"])
        off_repo = variant(repo, root / "off")
        two_repo = variant(repo, root / "two", instances=2, threads=1)
        with (
            serve(repo, root / "on.log") as on,
            serve(off_repo, root / "off.log") as off,
            serve(two_repo, root / "two.log") as two,
        ):
            on_c, off_c = f"batching_on_c{c}_b1", f"batching_off_c{c}_b1"
            scenarios = {
                "direct_onnxruntime_b1": Direct(repo, 1),
                f"direct_onnxruntime_b{c}": Direct(repo, c),  # what batching c requests gains
                "direct_onnxruntime_b32": Direct(repo, 32),
                on_c: Load(on.grpc_url, "asen_onnx", s, c, 1),
                off_c: Load(off.grpc_url, "asen_onnx", s, c, 1),
                f"two_instances_1_thread_batching_off_c{c}_b1": Load(
                    two.grpc_url, "asen_onnx", s, c, 1
                ),
                "batching_on_c2_b32": Load(on.grpc_url, "asen_onnx", s, 2, 32),
            }
            for _ in range(args.rounds):
                for scenario in scenarios.values():
                    scenario.run(args.duration / args.rounds)
            report: dict = {
                "model": str(args.checkpoint or args.config),
                "source_size": s,
                "cpu_cores": len(os.sched_getaffinity(0)),
                "served_as": next(c.how for c in on.choices if c.model.endswith("_onnx")),
                **{name: scenario.report() for name, scenario in scenarios.items()},
            }
            per_round = [
                a / b for a, b in zip(scenarios[on_c].rounds, scenarios[off_c].rounds, strict=True)
            ]
            if args.soak:
                soak = Load(on.grpc_url, "asen_onnx", s, 16, 1)
                soak.run(args.soak)
                report["soak_c16_b1"] = soak.report()
        rate = {k: v["throughput_img_s"] for k, v in report.items() if isinstance(v, dict)}
        ratio_batching = rate[on_c] / rate[off_c]
        best = max(rate[on_c], rate["batching_on_c2_b32"])
        ratio_direct = best / rate["direct_onnxruntime_b32"]
        report["ratios"] = {
            f"batching_on_vs_off_c{c}": round(ratio_batching, 2),
            f"batching_on_vs_off_c{c}_median_of_rounds": round(float(np.median(per_round)), 2),
            f"two_instances_1_thread_vs_batching_off_c{c}": round(
                rate[f"two_instances_1_thread_batching_off_c{c}_b1"] / rate[off_c], 2
            ),
            f"direct_onnxruntime_b{c}_vs_b1": round(
                rate[f"direct_onnxruntime_b{c}"] / rate["direct_onnxruntime_b1"], 2
            ),
            "best_triton_vs_direct_onnxruntime_b32": round(ratio_direct, 2),
        }
        report["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
        report["targets_met"] = {
            "batching_1.5x": ratio_batching >= 1.5,
            "direct_0.7x": ratio_direct >= 0.7,
            **({"soak_zero_errors": report["soak_c16_b1"]["errors"] == 0} if args.soak else {}),
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
