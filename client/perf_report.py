"""`asen bench serve`'s results: per load level, perf_analyzer's CSV row (client latency,
throughput, transfer) and the server's statistics of the level (queue, compute, batching),
as table rows, one CSV and a throughput-latency plot."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

from asen.client.perf_stats import ServerStats
from rich.table import Table

from asen import AsenError
from asen.atomic import atomic_write_bytes

_TRANSFER = ("Client Send", "Network+Server Send/Recv", "Client Recv")


@dataclass
class Level:
    """One load level: throughput (inferences/s, i.e. images/s), client latency
    percentiles, the server's mean queue and compute time per request (Triton's statistics
    of the level), the mean time moving a request and its response (client send and
    receive, network and server I/O; all ms), images per model execution (0 when the
    server reports no executions), and the load: a concurrency, or requests/s asked for."""

    concurrency: int
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    queue_ms: float
    compute_ms: float
    transfer_ms: float = 0.0
    batch_per_execution: float = 0.0
    request_rate: float = 0.0

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}

    @property
    def load(self) -> str:
        return f"{self.request_rate:g}/s" if self.request_rate else f"c={self.concurrency}"


def csv_rows(text: str) -> list[dict]:
    """The rows of perf_analyzer's verbose CSV (one level per run)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise AsenError("perf_analyzer's CSV holds no measurement")
    return rows


def merge_csv(texts: list[str]) -> str:
    """perf_analyzer's CSVs of several runs as one: the first header, every run's rows."""
    lines = texts[0].strip().splitlines()[:1]
    for text in texts:
        lines += [ln for ln in text.strip().splitlines()[1:] if ln.strip()]
    return "\n".join(lines) + "\n"


def make_level(row: dict, stats: ServerStats, *, concurrency: int, request_rate: float) -> Level:
    """A Level from perf_analyzer's CSV row (times in microseconds) and the server's
    statistics of the same run."""
    ms = 1e-3
    try:
        return Level(
            concurrency=concurrency,
            throughput=float(row["Inferences/Second"]),
            p50_ms=float(row["p50 latency"]) * ms,
            p90_ms=float(row["p90 latency"]) * ms,
            p99_ms=float(row["p99 latency"]) * ms,
            queue_ms=stats.queue_ms,
            compute_ms=stats.compute_ms,
            transfer_ms=sum(float(row[k]) for k in _TRANSFER) * ms,
            batch_per_execution=stats.batch_per_execution,
            request_rate=request_rate,
        )
    except (KeyError, ValueError) as e:
        raise AsenError(f"perf_analyzer's CSV is not in the expected format ({e})") from None


def levels_table(levels: list[Level], title: str) -> Table:
    """The figures, one row a load level."""
    table = Table(
        title=title, caption="latency in ms; server queue and compute: ms per request (Triton)"
    )
    load = "requests/s" if levels and levels[0].request_rate else "concurrency"
    for name in (load, "images/s", "p50", "p90", "p99", "queue", "compute", "batch/exec"):
        table.add_column(name, justify="right")
    for v in levels:
        table.add_row(
            f"{v.request_rate:g}" if v.request_rate else str(v.concurrency),
            f"{v.throughput:.1f}",
            *(f"{x:.2f}" for x in (v.p50_ms, v.p90_ms, v.p99_ms, v.queue_ms, v.compute_ms)),
            f"{v.batch_per_execution:.2f}",
        )
    return table


def threshold_note(levels: list[Level], threshold_ms: float | None) -> str:
    """Why the sweep ended where it did (its last level's p99 is over the threshold), or ""."""
    if threshold_ms is None or not levels or levels[-1].p99_ms <= threshold_ms:
        return ""
    last = levels[-1]
    return (
        f"{last.load}: p99 {last.p99_ms:.1f} ms is over --latency-threshold {threshold_ms:g} ms"
        " (the sweep ends at the first such level)"
    )


def plot(levels: list[Level], path: Path, title: str) -> None:
    """Throughput against p50 and p99 latency, each point labelled with its load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = [level.throughput for level in levels]
    for attr, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
        ax.plot(x, [getattr(level, attr) for level in levels], style, label=attr[:3])
    for level in levels:
        ax.annotate(
            level.load,
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
