"""The server's own account of a load level: Triton's statistics API (cumulative counts and
nanoseconds per model), read before and after the level; the difference is the level's."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

from asen import AsenError

_PHASES = ("success", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ServerStats:
    """Cumulative statistics of one model (all its versions, or the one asked for)."""

    requests: int = 0  # successful requests
    inferences: int = 0  # images (a batch-N request counts N)
    executions: int = 0  # model executions (a dynamic batch counts once)
    queue_ns: int = 0
    compute_ns: int = 0  # compute input + infer + output

    def __sub__(self, before: ServerStats) -> ServerStats:
        return ServerStats(
            *(getattr(self, f) - getattr(before, f) for f in self.__dataclass_fields__)
        )

    @classmethod
    def chain(cls, steps: list[ServerStats]) -> ServerStats:
        """The steps of an ensemble as one: each request passes every step once, so queue
        and compute add up; batching is the last step's (the encoder's)."""
        last = steps[-1]
        return cls(
            requests=last.requests,
            inferences=last.inferences,
            executions=last.executions,
            queue_ns=sum(s.queue_ns for s in steps),
            compute_ns=sum(s.compute_ns for s in steps),
        )

    @property
    def queue_ms(self) -> float:
        """Mean time a request waited in the model's queue (ms)."""
        return self.queue_ns / self.requests / 1e6 if self.requests else 0.0

    @property
    def compute_ms(self) -> float:
        """Mean time the model computed for a request (ms)."""
        return self.compute_ns / self.requests / 1e6 if self.requests else 0.0

    @property
    def batch_per_execution(self) -> float:
        """Images per model execution (0 when the model reports no executions: ensembles)."""
        return self.inferences / self.executions if self.executions else 0.0


def _ns(phase: dict | None) -> tuple[int, int]:
    """(count, ns) of one phase; gRPC's JSON leaves zeros out and writes int64 as strings."""
    phase = phase or {}
    return int(phase.get("count", 0)), int(phase.get("ns", 0))


def json_answer(client, method: str, *args):
    """A tritonclient call's answer as JSON: gRPC clients are asked for it (`as_json`);
    HTTP ones answer JSON already."""
    call = getattr(client, method)
    if "as_json" in inspect.signature(call).parameters:
        return call(*args, as_json=True)
    return call(*args)


def read_level(
    client, models: tuple[str, ...], version: str = "", *, settle_s: float = 2.0
) -> ServerStats:
    """Statistics of the served model (`models`: itself, or an ensemble's steps, whose
    version is the one they serve), once two reads 50 ms apart agree: Triton records a
    request just after sending its response, so a read right after the last answer may
    miss it."""

    def read() -> ServerStats:
        if len(models) == 1:
            return read_stats(client, models[0], version)
        return ServerStats.chain([read_stats(client, m) for m in models])

    last, deadline = read(), time.monotonic() + settle_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now == last:
            break
        last = now
    return last


def read_stats(client, model: str, version: str = "") -> ServerStats:
    """`model`'s cumulative statistics from a tritonclient gRPC or HTTP client."""
    try:
        answer = json_answer(client, "get_inference_statistics", model, version)
    except Exception as e:  # noqa: BLE001 - tritonclient raises its own and transport errors
        raise AsenError(f"Triton statistics of {model}: {e}") from None
    total = ServerStats()
    for entry in answer.get("model_stats", []):
        if entry.get("name") != model:
            continue
        phases = {p: _ns(entry.get("inference_stats", {}).get(p)) for p in _PHASES}
        total = ServerStats(
            requests=total.requests + phases["success"][0],
            inferences=total.inferences + int(entry.get("inference_count", 0)),
            executions=total.executions + int(entry.get("execution_count", 0)),
            queue_ns=total.queue_ns + phases["queue"][1],
            compute_ns=total.compute_ns
            + sum(phases[p][1] for p in ("compute_input", "compute_infer", "compute_output")),
        )
    return total
