"""Triton serving against ONNX Runtime called directly, in one run.

The served side is measured by NVIDIA's perf_analyzer (through `client.perf`, what `asen
bench serve` runs) on three servers of the same export: dynamic batching on, off, and off
with two 1-thread instances. This script adds what perf_analyzer cannot do: ONNX Runtime
called directly in this process at the batch size the batcher actually formed (images per
model execution, from Triton's statistics), in the same run, interleaved round by round so
that other activity on a shared machine slows both alike. Optionally a concurrency sweep
per server, system shared memory against none, and a soak at concurrency 16.

    python -m benchmarks.bench_triton [--config small|paper] [--checkpoint best.pt]
        [--concurrency 8] [--rounds 3] [--interval-ms 2000] [--sweep 1:16:1] [--shm]
        [--soak 60] [--figures PATH]

Prints one JSON object. Serving targets: at concurrency 8 the served throughput is at
least 0.85x direct ONNX Runtime at the formed batch size; the soak ends with zero errors
(perf_analyzer stops at the first failed request).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from asen.client.perf import Sweep, Target, find_perf_analyzer, run_sweep
from asen.client.server import free_ports, start_server
from asen.export.build import export_model
from asen.export.layout import artifact_path
from asen.export.repository import read_config
from google.protobuf import text_format

from asen import AsenError
from asen.atomic import atomic_write_text
from asen.backends import open_encoder
from benchmarks import harness
from benchmarks.models import CONFIGS, random_checkpoint

ENCODER = "asen_onnx"
STABILITY = 500  # percent: a shared CPU varies a lot between windows; medians over rounds


def make_repo(root: Path, config: str, checkpoint: Path | None) -> Path:
    """Export `checkpoint` (or a random stage-2 model of `config`) into a fresh repository."""
    if checkpoint is None:
        checkpoint = random_checkpoint(config, root / "model.pt")
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
        atomic_write_text(path, text_format.MessageToString(cfg))
    return out


class Direct:
    """ONNX Runtime in this process at batch `batch`: the reference throughput."""

    def __init__(self, repo: Path, batch: int):
        artifact = str(artifact_path(repo, "asen", "onnx"))
        self.encoder = open_encoder("onnx", artifact, device="cpu", batch_size=batch)
        s, rng = self.encoder.info.source_size, np.random.default_rng(0)
        self.images = rng.integers(0, 256, (batch, 3, s, s), dtype=np.uint8)
        self.attributes = rng.integers(0, 4, batch).astype(np.int64)
        self.encoder.encode(self.images, self.attributes)
        self.batch, self.rounds = batch, []

    def run(self, seconds: float) -> float:
        """Images/s over `seconds`; kept as one round."""
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            self.encoder.encode(self.images, self.attributes)
            done += self.batch
        self.rounds.append(done / (time.perf_counter() - start))
        return self.rounds[-1]


def serve(repo: Path, log: Path):
    ports = free_ports()
    return start_server(repo, log_file=log, **ports)


def measure(url: str, concurrency: int, args, shared_memory: str = "none") -> dict:
    """One perf_analyzer measurement at `concurrency` (tensor path, batch-1 requests)."""
    level = run_sweep(
        Target(url, ENCODER),
        sweep=Sweep(concurrency, concurrency),
        shared_memory=shared_memory,
        interval_ms=args.interval_ms,
        stability=STABILITY,
    )[0]
    return level.as_dict()


def sweep(url: str, levels: Sweep, args) -> list[dict] | dict:
    """A perf_analyzer sweep of one server; its failure is recorded, not fatal."""
    try:
        found = run_sweep(
            Target(url, ENCODER), sweep=levels, interval_ms=args.interval_ms, stability=STABILITY
        )
    except AsenError as e:
        return {"error": str(e)}
    return [level.as_dict() for level in found]


def median_of(rows: list[dict], key: str) -> float:
    return round(float(harness.median(r[key] for r in rows)), 3)


def rounds(servers: dict, repo: Path, args) -> dict:
    """Interleaved rounds: each server at the concurrency, then direct ONNX Runtime at
    batch 1 and at the batch the batcher formed so far."""
    c, served = args.concurrency, {name: [] for name in servers}
    shm: dict[str, list] = {"none": [], "system": []}
    direct: dict[int, Direct] = {}
    ratios = []
    for _ in range(args.rounds):
        for name, handle in servers.items():
            served[name].append(measure(handle.grpc_url, c, args))
        if args.shm:
            for kind in shm:
                shm[kind].append(measure(servers["batching_on"].grpc_url, c, args, kind))
        formed = max(1, round(np.median([r["batch_per_execution"] for r in served["batching_on"]])))
        for batch in {1, formed}:
            direct.setdefault(batch, Direct(repo, batch)).run(args.interval_ms / 1000)
        ratios.append(served["batching_on"][-1]["throughput"] / direct[formed].rounds[-1])
    report = {
        name: {
            "throughput_img_s": median_of(rows, "throughput"),
            "p50_ms": median_of(rows, "p50_ms"),
            "p99_ms": median_of(rows, "p99_ms"),
            "batch_per_execution": median_of(rows, "batch_per_execution"),
            "rounds": [r["throughput"] for r in rows],
        }
        for name, rows in served.items()
    }
    report["direct_onnxruntime"] = {
        f"b{b}": round(float(np.median(d.rounds)), 1) for b, d in sorted(direct.items())
    }
    report["formed_batch"] = formed
    report[f"served_vs_direct_at_formed_batch_c{c}"] = {
        "median_of_rounds": round(float(np.median(ratios)), 3),
        "rounds": [round(r, 3) for r in ratios],
    }
    if args.shm:
        rate = {k: float(np.median([r["throughput"] for r in v])) for k, v in shm.items()}
        report["shared_memory"] = {
            "throughput_img_s": {k: round(v, 2) for k, v in rate.items()},
            "transfer_ms": {k: median_of(v, "transfer_ms") for k, v in shm.items()},
            "p50_ms": {k: median_of(v, "p50_ms") for k, v in shm.items()},
            "throughput_system_vs_none": round(rate["system"] / rate["none"], 3),
            "rounds": {k: [r["throughput"] for r in v] for k, v in shm.items()},
        }
    return report


def _parser():
    parser = harness.parser(__doc__)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--checkpoint", type=Path, help="serve this checkpoint's model instead")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval-ms", type=int, default=2000, help="perf_analyzer window")
    parser.add_argument("--sweep", help="also sweep each server over START:END:STEP")
    parser.add_argument("--shm", action="store_true", help="system shared memory vs none")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds at concurrency 16")
    return parser


SERVERS = ("batching_on", "batching_off", "two_instances_1_thread")


def figures(report: dict) -> harness.Figures:
    """One row per server and one per direct ONNX Runtime batch size."""
    c = report["concurrency"]
    rows = []
    for name in SERVERS:
        row = report[name]
        rows.append(
            [
                f"served: {name}",
                f"concurrency {c}",
                row["throughput_img_s"],
                row["p50_ms"],
                row["p99_ms"],
                row["batch_per_execution"],
            ]
        )
    for batch, rate in report["direct_onnxruntime"].items():
        rows.append(["direct ONNX Runtime", f"batch {batch[1:]}", rate, None, None, int(batch[1:])])
    ratio = report[f"served_vs_direct_at_formed_batch_c{c}"]["median_of_rounds"]
    notes = [
        f"model {report['model']}, served as {report['served_as']}, {report['cpu_cores']} cores",
        f"served (batching on) against direct ONNX Runtime at the formed batch "
        f"({report['formed_batch']}): {ratio}",
    ]
    if "shared_memory" in report:
        shm = report["shared_memory"]
        notes.append(f"system shared memory against none: {shm['throughput_system_vs_none']}")
    columns = ["engine", "load", "images/s", "p50 (ms)", "p99 (ms)", "images per execution"]
    return harness.Figures("Triton serving against ONNX Runtime in process", columns, rows, notes)


def main() -> None:
    args = _parser().parse_args()
    try:
        find_perf_analyzer()  # before three servers start: one line saying how to get it
    except AsenError as e:
        raise SystemExit(f"error: {e}") from None
    root = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    load_before = os.getloadavg()
    try:
        repo = make_repo(root, args.config, args.checkpoint)
        with (
            serve(repo, root / "on.log") as on,
            serve(variant(repo, root / "off"), root / "off.log") as off,
            serve(variant(repo, root / "two", instances=2, threads=1), root / "two.log") as two,
        ):
            servers = dict(zip(SERVERS, (on, off, two), strict=True))
            report: dict = {
                "model": str(args.checkpoint or args.config),
                "cpu_cores": harness.cores(),
                "served_as": next(c.how for c in on.choices if c.model == ENCODER),
                "concurrency": args.concurrency,
                **rounds(servers, repo, args),
            }
            if args.sweep:
                report["sweeps"] = {
                    name: sweep(h.grpc_url, Sweep.parse(args.sweep), args)
                    for name, h in servers.items()
                }
            if args.soak:
                report["soak_c16"] = soak(on.grpc_url, args.soak)
        report["load_average"] = {"before": load_before, "after": os.getloadavg()}
        harness.finish(report, args, figures, indent=2)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def soak(url: str, seconds: float) -> dict:
    """`seconds` at concurrency 16 (perf_analyzer stops at the first failed request)."""
    found = run_sweep(
        Target(url, ENCODER),
        sweep=Sweep(16, 16),
        interval_ms=int(seconds * 1000 / 3),  # three windows
        stability=STABILITY,
    )[0]
    return {**found.as_dict(), "errors": 0, "seconds": seconds}


if __name__ == "__main__":
    main()
