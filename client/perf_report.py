"""perf_analyzer's results: its verbose CSV (`-f --verbose-csv`) and server counts, as rows
for a table, and a throughput-latency plot."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from asen import AsenError
from asen.atomic import atomic_write_bytes

_LEVEL = re.compile(r"^Request concurrency: (\d+)", re.M)
_TRANSFER = ("Client Send", "Network+Server Send/Recv", "Client Recv")
_COUNT = re.compile(r"^\s+(Inference|Execution) count: (\d+)", re.M)


@dataclass
class Level:
    """One concurrency level: throughput (inferences/s, i.e. images/s), client latency
    percentiles, the server's mean queue and compute time, the mean time moving a request
    and its response (client send and receive, network and server I/O; all ms), and images
    per model execution (from the server's counts; 0 when not reported)."""

    concurrency: int
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    queue_ms: float
    compute_ms: float
    transfer_ms: float = 0.0
    batch_per_execution: float = 0.0

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def server_batches(stdout: str) -> dict[int, float]:
    """Images per model execution at each concurrency level, from perf_analyzer's report
    of the server's inference and execution counts (the first model listed)."""
    out: dict[int, float] = {}
    starts = list(_LEVEL.finditer(stdout))
    for k, m in enumerate(starts):
        block = stdout[m.end() : starts[k + 1].start() if k + 1 < len(starts) else None]
        counts: dict[str, int] = {}
        for kind, value in _COUNT.findall(block):
            counts.setdefault(kind, int(value))
        if counts.get("Execution"):
            out[int(m.group(1))] = counts["Inference"] / counts["Execution"]
    return out


def parse_csv(text: str, batches: dict[int, float] | None = None) -> list[Level]:
    """Rows of perf_analyzer's verbose CSV (times in microseconds), sorted by concurrency."""
    ms = 1e-3
    levels = []
    try:
        for row in csv.DictReader(io.StringIO(text)):
            c = int(row["Concurrency"])
            compute = sum(
                float(row[k])
                for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output")
            )
            levels.append(
                Level(
                    concurrency=c,
                    throughput=float(row["Inferences/Second"]),
                    p50_ms=float(row["p50 latency"]) * ms,
                    p90_ms=float(row["p90 latency"]) * ms,
                    p99_ms=float(row["p99 latency"]) * ms,
                    queue_ms=float(row["Server Queue"]) * ms,
                    compute_ms=compute * ms,
                    transfer_ms=sum(float(row[k]) for k in _TRANSFER) * ms,
                    batch_per_execution=(batches or {}).get(c, 0.0),
                )
            )
    except (KeyError, ValueError) as e:
        raise AsenError(f"perf_analyzer's CSV is not in the expected format ({e})") from None
    return sorted(levels, key=lambda level: level.concurrency)


def plot(levels: list[Level], path: Path, title: str) -> None:
    """Throughput against p50 and p99 latency, each point labelled with its concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = [level.throughput for level in levels]
    for attr, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
        ax.plot(x, [getattr(level, attr) for level in levels], style, label=attr[:3])
    for level in levels:
        ax.annotate(
            f"c={level.concurrency}",
            (level.throughput, level.p50_ms),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
