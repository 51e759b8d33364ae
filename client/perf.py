"""`asen bench serve`: NVIDIA's perf_analyzer against any running Triton server.

perf_analyzer is the one named by ASEN_PERF_ANALYZER, else the one on PATH (NVIDIA's SDK
container), else the one `scripts/install_perf_analyzer.sh` installs into `.venv-perf/`.
The target is checked first with the project's own client (reachable, model and version
ready, an asen encoder model), then perf_analyzer sweeps the concurrency range with real
inputs and its verbose CSV is parsed into one row per level.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from asen.client.connection import check_protocol
from asen.client.perf_inputs import dataset_samples, random_samples, write_input_json
from asen.client.perf_report import Level, parse_csv, server_batches
from asen.client.shm import check_shared_memory

from asen import AsenError
from asen.atomic import atomic_write_text
from asen.remote import Tls

ENV = "ASEN_PERF_ANALYZER"
LOCAL = Path(__file__).resolve().parent.parent / ".venv-perf" / "perf_analyzer"
INSTALL_HINT = (
    "perf_analyzer not found: run `bash scripts/install_perf_analyzer.sh` (installs it into "
    ".venv-perf/), use NVIDIA's Triton SDK container (nvcr.io/nvidia/tritonserver:<tag>-py3-sdk)"
    f", or set {ENV} to its path"
)
SAMPLES = 32  # input data steps (distinct requests) perf_analyzer cycles through


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


def check_target(target: Target):
    """The served model's ModelInfo, after checking the server answers and the model (and
    version) is a ready asen encoder model; each failure one line."""
    from asen.client.triton import TritonEncoder

    with TritonEncoder(
        target.url,
        target.model,
        target.protocol,
        retries=1,
        tls=target.tls,
        headers=target.headers,
    ) as encoder:
        if encoder.model != target.model:
            raise AsenError(
                f"--model {target.model} takes encoded image bytes, which perf_analyzer cannot "
                f"send from its JSON input; benchmark its encoder model: --model {encoder.model}"
            )
        if target.version:
            client = encoder._client()
            try:
                ready = client.is_model_ready(target.model, target.version)
            except Exception:  # noqa: BLE001 - any failure means: not served
                ready = False
            if not ready:
                raise AsenError(
                    f"Triton at {target.url}: model {target.model} version {target.version} "
                    "is not served"
                )
        return encoder.info


def command(target: Target, *, binary: Path, sweep: Sweep, batch_size: int, options: dict) -> list:
    """The perf_analyzer command line (without the input data and report file)."""
    url = target.url
    if target.tls is not None and target.protocol == "http" and "://" not in url:
        url = "https://" + url
    cmd = [str(binary), "-m", target.model, "-u", url, "-i", target.protocol]
    cmd += ["--concurrency-range", str(sweep), "-b", str(batch_size)]
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


def run_sweep(
    target: Target,
    *,
    sweep: Sweep,
    batch_size: int = 1,
    shared_memory: str = "none",
    input_data: Path | None = None,
    csv_out: Path | None = None,
    interval_ms: int = 5000,
    stability: int = 10,
    timeout_s: float | None = None,
) -> list[Level]:
    """Check the target, write the input data, run perf_analyzer over the sweep and return
    one Level per concurrency; `csv_out` receives perf_analyzer's own CSV."""
    binary = find_perf_analyzer()
    if batch_size < 1:
        raise AsenError(f"--batch-size {batch_size}: must be at least 1")
    options = {
        "shared_memory": check_shared_memory(shared_memory),
        "interval_ms": interval_ms,
        "stability": stability,
    }
    info = check_target(target)
    with tempfile.TemporaryDirectory(prefix="asen-perf-") as tmp:
        data = (
            dataset_samples(Path(input_data), info, SAMPLES)
            if input_data is not None
            else random_samples(info, SAMPLES)
        )
        json_path = write_input_json(data, Path(tmp) / "input.json")
        report = Path(tmp) / "perf.csv"
        cmd = command(target, binary=binary, sweep=sweep, batch_size=batch_size, options=options)
        cmd += ["--input-data", str(json_path), "-f", str(report)]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise AsenError(f"perf_analyzer did not finish within {timeout_s:.0f} s") from None
        output = done.stdout + done.stderr
        if done.returncode != 0 or not report.is_file():
            raise AsenError(f"perf_analyzer failed: {_failure(output)}")
        text = report.read_text()
    if csv_out is not None:
        atomic_write_text(csv_out, text)
    return parse_csv(text, server_batches(output))
