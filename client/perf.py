"""`asen bench serve`: NVIDIA's perf_analyzer against any running Triton server.

perf_analyzer is the one named by ASEN_PERF_ANALYZER, else the one on PATH (NVIDIA's SDK
container), else the one `scripts/install_perf_analyzer.sh` installs into `.venv-perf/`.
The target is checked first with the project's own client (reachable, model and version
ready; an asen encoder model, the `asen` bytes ensemble or `asen_search`), then
perf_analyzer runs once per load level (a concurrency, or a request rate with constant or
Poisson arrivals) with real inputs. Each level's row joins perf_analyzer's CSV (client
latency, throughput) with the difference of Triton's statistics before and after it
(server queue, compute, batching).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from asen.client.connection import check_protocol, make_client
from asen.client.perf_inputs import input_steps, write_input_json
from asen.client.perf_report import Level, csv_rows, make_level, merge_csv
from asen.client.perf_stats import json_answer, read_level
from asen.client.shm import check_shared_memory

from asen import AsenError
from asen.atomic import atomic_write_text
from asen.remote import Tls

if TYPE_CHECKING:
    from asen.model.shape import ModelInfo

ENV = "ASEN_PERF_ANALYZER"
LOCAL = Path(__file__).resolve().parent.parent / ".venv-perf" / "perf_analyzer"
INSTALL_HINT = (
    "perf_analyzer not found: run `bash scripts/install_perf_analyzer.sh` (installs it into "
    ".venv-perf/), use NVIDIA's Triton SDK container (nvcr.io/nvidia/tritonserver:<tag>-py3-sdk)"
    f", or set {ENV} to its path"
)
SAMPLES = 32  # input data steps (distinct requests) perf_analyzer cycles through
DISTRIBUTIONS = ("constant", "poisson")


def find_perf_analyzer() -> Path:
    """The perf_analyzer to run; one line saying how to get one when there is none."""
    named = os.environ.get(ENV)
    if named:
        if not (Path(named).is_file() and os.access(named, os.X_OK)):
            raise AsenError(f"{ENV}={named}: not an executable file")
        return Path(named)
    on_path = shutil.which("perf_analyzer")
    if on_path:
        return Path(on_path)
    if LOCAL.is_file() and os.access(LOCAL, os.X_OK):
        return LOCAL
    raise AsenError(INSTALL_HINT)


@dataclass(frozen=True)
class Sweep:
    """A concurrency range START:END:STEP (or a single N)."""

    start: int
    end: int
    step: int = 1

    @classmethod
    def parse(cls, text: str) -> Sweep:
        try:
            numbers = [int(p) for p in text.split(":")]
        except ValueError:
            numbers = []
        if not 1 <= len(numbers) <= 3:
            raise AsenError(f"--concurrency {text}: expected N or START:END[:STEP] (e.g. 1:16:1)")
        start, end, step = (numbers * 2)[:2] + [1] if len(numbers) == 1 else [*numbers, 1][:3]
        if start < 1 or end < start or step < 1:
            raise AsenError(
                f"--concurrency {text}: concurrency starts at 1 or more, END >= START, STEP >= 1"
            )
        return cls(start, end, step)

    def __str__(self) -> str:
        return f"{self.start}:{self.end}:{self.step}"

    def levels(self) -> list[int]:
        return list(range(self.start, self.end + 1, self.step))


@dataclass(frozen=True)
class RateSweep:
    """Request rates START:END:STEP (or a single R), requests/s, and how requests arrive:
    evenly spaced (constant) or as a Poisson process."""

    start: float
    end: float
    step: float = 1.0
    distribution: str = "constant"

    @classmethod
    def parse(cls, text: str, distribution: str = "constant") -> RateSweep:
        try:
            numbers = [float(p) for p in text.split(":")]
        except ValueError:
            numbers = []
        if not 1 <= len(numbers) <= 3:
            raise AsenError(
                f"--request-rate {text}: expected R or START:END[:STEP] (e.g. 10:40:10)"
            )
        start, end, step = (
            [*numbers, numbers[-1], 1.0][:3] if len(numbers) == 1 else [*numbers, 1.0][:3]
        )
        if start <= 0 or end < start or step <= 0:
            raise AsenError(f"--request-rate {text}: rates above 0, END >= START, STEP above 0")
        if distribution not in DISTRIBUTIONS:
            raise AsenError(
                f"--request-distribution {distribution}: expected {' or '.join(DISTRIBUTIONS)}"
            )
        return cls(start, end, step, distribution)

    def __str__(self) -> str:
        return f"{self.distribution} rate {self.start:g}:{self.end:g}:{self.step:g}/s"

    def levels(self) -> list[float]:
        count = int((self.end - self.start) / self.step + 1e-9) + 1
        return [round(self.start + k * self.step, 6) for k in range(count)]


def parse_load(
    concurrency: str | None, request_rate: str | None, distribution: str = "constant"
) -> tuple[Sweep, RateSweep | None]:
    """The concurrency sweep (default 1:16:1) and, when asked, the request-rate sweep that
    replaces it."""
    if concurrency and request_rate:
        raise AsenError("--concurrency and --request-rate: give one of them")
    rates = RateSweep.parse(request_rate, distribution) if request_rate else None
    return Sweep.parse(concurrency or "1:16:1"), rates


@dataclass
class Target:
    """A served model and how to reach it."""

    url: str
    model: str
    protocol: str = "grpc"
    version: str = ""
    tls: Tls | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        if self.headers and self.protocol == "grpc":
            raise AsenError(
                "--header: perf_analyzer sends headers over HTTP only (--protocol http)"
            )


@dataclass(frozen=True)
class Served:
    """What the target serves: its kind (an encoder model, the `asen` bytes ensemble or
    `asen_search`), the shape of the encoder model behind it, and the models whose
    statistics account for a request (the target, or the ensemble's steps: Triton counts
    an ensemble's own queue as nil)."""

    kind: str
    info: ModelInfo
    stats_models: tuple[str, ...]


def _served_config(client, target: Target) -> dict:
    """The target model's config (JSON form), after checking the server answers and the
    model (and version) is ready; each failure one line."""
    try:
        client.is_server_live()
    except Exception as e:  # noqa: BLE001 - tritonclient raises its own and transport errors
        raise AsenError(f"Triton at {target.url} ({target.protocol}): unreachable ({e})") from None
    try:
        ready = client.is_model_ready(target.model, target.version)
    except Exception:  # noqa: BLE001 - any failure means: not served
        ready = False
    if not ready:
        what = f"version {target.version} of model" if target.version else "model"
        raise AsenError(f"Triton at {target.url}: {what} {target.model} is not served")
    config = json_answer(client, "get_model_config", target.model, target.version)
    return config.get("config", config)  # gRPC wraps it, HTTP does not


def model_kind(config: dict) -> tuple[str, str, tuple[str, ...]]:
    """(kind, the encoder model behind it, the models whose statistics count) of a served
    model's config."""
    names = {t["name"] for t in config.get("input", [])}
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    if config.get("platform") == "ensemble":
        steps = tuple(step["model_name"] for step in config["ensemble_scheduling"]["step"])
        return "ensemble", steps[-1], steps
    if {"k", "image_bytes"} <= names and params.get("encoder_model"):
        return "search", params["encoder_model"], (config["name"],)
    return "encoder", config["name"], (config["name"],)


def check_target(target: Target) -> Served:
    """What the target serves, checked with the project's own client; each failure one line."""
    from asen.client.triton import TritonEncoder

    client = _client(target)
    try:
        kind, encoder_model, stats_models = model_kind(_served_config(client, target))
    finally:
        client.close()
    with TritonEncoder(
        target.url,
        encoder_model,
        target.protocol,
        retries=1,
        tls=target.tls,
        headers=target.headers,
    ) as encoder:
        return Served(kind, encoder.info, stats_models)


def _client(target: Target):
    return make_client(target.url, target.protocol, tls=target.tls, headers=target.headers)


def command(target: Target, *, binary: Path, batch_size: int, options: dict) -> list:
    """The perf_analyzer command line (without the load, the input data and report file)."""
    url = target.url
    if target.tls is not None and target.protocol == "http" and "://" not in url:
        url = "https://" + url
    cmd = [str(binary), "-m", target.model, "-u", url, "-i", target.protocol]
    cmd += ["-b", str(batch_size)]
    cmd += ["--shared-memory", options["shared_memory"]]
    cmd += ["--measurement-interval", str(options["interval_ms"])]
    cmd += ["--stability-percentage", str(options["stability"]), "--verbose-csv"]
    if target.version:
        cmd += ["-x", target.version]
    for key, value in target.headers.items():
        cmd += ["-H", f"{key}:{value}"]
    if target.tls is not None:
        cmd += _tls_args(target)
    return cmd


def _tls_args(target: Target) -> list[str]:
    tls = target.tls
    if target.protocol == "grpc":
        named = {
            "--ssl-grpc-root-certifications-file": tls.root_certificates,
            "--ssl-grpc-private-key-file": tls.private_key,
            "--ssl-grpc-certificate-chain-file": tls.certificate_chain,
        }
        args = ["--ssl-grpc-use-ssl", "true"]
    else:
        named = {
            "--ssl-https-ca-certificates-file": tls.root_certificates,
            "--ssl-https-private-key-file": tls.private_key,
            "--ssl-https-client-certificate-file": tls.certificate_chain,
        }
        args = []
    for flag, path in named.items():
        if path:
            args += [flag, str(path)]
    return args


def _failure(output: str) -> str:
    """perf_analyzer's reason for failing, one line."""
    keys = ("error", "Failed", "failed", "Error")
    lines = [ln.strip() for ln in output.splitlines() if any(k in ln for k in keys)]
    reason = lines[-1] if lines else (output.strip().splitlines() or ["no output"])[-1]
    if "stable measurement" in output:
        reason += " (raise --measurement-interval or --stability)"
    return reason


def load_args(level: int | float, rates: RateSweep | None) -> list[str]:
    """perf_analyzer's options for one load level."""
    if rates is None:
        return ["--concurrency-range", str(level)]
    return ["--request-rate-range", f"{level:g}", "--request-distribution", rates.distribution]


def _run_once(cmd: list[str], report: Path, timeout_s: float | None) -> str:
    """Run perf_analyzer for one level; its CSV."""
    report.unlink(missing_ok=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise AsenError(f"perf_analyzer did not finish within {timeout_s:.0f} s") from None
    if done.returncode != 0 or not report.is_file():
        raise AsenError(f"perf_analyzer failed: {_failure(done.stdout + done.stderr)}")
    return report.read_text()


def _check_options(served: Served, *, batch_size: int, shared_memory: str) -> None:
    if batch_size < 1:
        raise AsenError(f"--batch-size {batch_size}: must be at least 1")
    if served.kind == "search" and batch_size != 1:
        raise AsenError(f"--batch-size {batch_size}: asen_search takes one query per request")
    if served.kind == "search" and shared_memory != "none":
        raise AsenError(
            f"--shared-memory {shared_memory}: asen_search's outputs vary in size; use none"
        )


def run_sweep(
    target: Target,
    *,
    sweep: Sweep | None = None,
    rates: RateSweep | None = None,
    latency_threshold_ms: float | None = None,
    batch_size: int = 1,
    shared_memory: str = "none",
    input_data: Path | None = None,
    csv_out: Path | None = None,
    interval_ms: int = 5000,
    stability: int = 10,
    timeout_s: float | None = None,
) -> list[Level]:
    """Check the target, write the input data, run perf_analyzer once per level of the
    concurrency `sweep` or the request `rates`, and return one Level per level run (the
    sweep stops after the first level whose p99 exceeds `latency_threshold_ms`);
    `csv_out` receives perf_analyzer's CSV rows of every level under one header."""
    binary = find_perf_analyzer()
    options = {
        "shared_memory": check_shared_memory(shared_memory),
        "interval_ms": interval_ms,
        "stability": stability,
    }
    served = check_target(target)
    _check_options(served, batch_size=batch_size, shared_memory=options["shared_memory"])
    loads = rates.levels() if rates is not None else (sweep or Sweep(1, 16)).levels()
    levels, texts, client = [], [], _client(target)
    with tempfile.TemporaryDirectory(prefix="asen-perf-") as tmp:
        root = Path(input_data) if input_data is not None else None
        steps = input_steps(served.kind, served.info, root=root, count=SAMPLES)
        json_path = write_input_json(steps, Path(tmp) / "input.json")
        report = Path(tmp) / "perf.csv"
        cmd = command(target, binary=binary, batch_size=batch_size, options=options)
        cmd += ["--input-data", str(json_path), "-f", str(report)]
        try:
            for load in loads:
                before = read_level(client, served.stats_models, target.version)
                texts.append(_run_once([*cmd, *load_args(load, rates)], report, timeout_s))
                stats = read_level(client, served.stats_models, target.version) - before
                levels.append(
                    make_level(
                        csv_rows(texts[-1])[-1],
                        stats,
                        concurrency=0 if rates else int(load),
                        request_rate=float(load) if rates else 0.0,
                    )
                )
                if latency_threshold_ms is not None and levels[-1].p99_ms > latency_threshold_ms:
                    break
        finally:
            client.close()
    if csv_out is not None:
        atomic_write_text(csv_out, merge_csv(texts))
    return levels
