"""The fault-injection test hook: named points in training where a test can have the
process kill or stop itself, so that a crash lands at a chosen moment, deterministically.

Set `ASEN_TEST_FAULT=ACTION@POINT[#N]` in a training process's environment: at the N-th
time (default 1) it reaches POINT, the process sends itself SIGKILL (ACTION `kill`) or
SIGSTOP (ACTION `stop`, for a test that wants to act on a paused run). Points:

- `step`: inside a training step, after the backward pass and before the optimizer step;
- `best`, `last`: while writing best.pt / last.pt (the temporary file is written, not yet
  renamed over the checkpoint);
- `saved`: after last.pt is saved, before metrics.jsonl is rewritten;
- `metrics`: while writing metrics.jsonl (temporary written, not yet renamed).

Unset (always, outside tests), every point is a no-op."""

from __future__ import annotations

import os
import signal
from collections import Counter

from asen.parse import whole_number

ENV = "ASEN_TEST_FAULT"
POINTS = ("step", "best", "last", "saved", "metrics")
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
_reached: Counter[str] = Counter()


def parse(spec: str) -> tuple[str, str, int]:
    """`kill@last#2` -> ("kill", "last", 2)."""
    action, _, rest = spec.partition("@")
    point, _, count = rest.partition("#")
    if action not in ACTIONS or point not in POINTS or whole_number(count or "1") is None:
        raise ValueError(
            f"{ENV}={spec}: expected ACTION@POINT[#N] with ACTION in {sorted(ACTIONS)} "
            f"and POINT in {list(POINTS)}"
        )
    return action, point, int(count or 1)


def fault_point(name: str) -> None:
    """Mark reaching point `name`; act if ASEN_TEST_FAULT chose this moment."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    action, point, count = parse(spec)
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == count:
        os.kill(os.getpid(), ACTIONS[action])
