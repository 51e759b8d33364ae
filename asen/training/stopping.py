"""When to stop early: a time budget, or SIGTERM / SIGINT / SIGHUP. Either way the current
step finishes, the model is validated and saved (a partial epoch), and training ends."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType, TracebackType

from asen import distributed
from asen.signals import STOP_SIGNALS

SIGNALS = STOP_SIGNALS


class StopRequest:
    """Context manager: while active, the first SIGTERM, SIGINT or SIGHUP asks for a clean
    stop; a second one gets the handlers from before (SIGINT raises KeyboardInterrupt;
    under `asen`, SIGTERM and SIGHUP raise asen.signals.Stopped: stop at once, exit 128 +
    the signal).

    Handlers are installed only from the main thread. DataLoader workers ignore the stop
    signals (asen/data/datasets.py, `make_loader`): a signal to the process group (Ctrl-C,
    `timeout`, Slurm, systemd) reaches them too, and the main process finishes its step
    with its workers alive, then stops them itself."""

    def __init__(self, time_budget_min: float | None = None):
        self.budget_s = None if time_budget_min is None else time_budget_min * 60
        self.started = time.monotonic()
        self.signal: signal.Signals | None = None
        self._owner = os.getpid()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:  # a forked DataLoader worker: the main process decides
            return
        self.signal = signal.Signals(signum)
        self._restore()  # a second signal acts as usual

    def start_clock(self) -> None:
        """The time budget counts from here (training, not set-up)."""
        self.started = time.monotonic()

    def over_budget(self) -> bool:
        return self.budget_s is not None and time.monotonic() - self.started >= self.budget_s

    def should_stop(self) -> bool:
        """Whether to stop now; under torchrun every rank gets the same answer (a collective:
        call it at the same point on every rank)."""
        return distributed.any_rank(self.signal is not None or self.over_budget())

    def interrupted(self) -> bool:
        """Whether a signal asked for a stop (the same answer on every rank, as above)."""
        return distributed.any_rank(self.signal is not None)

    @property
    def reason(self) -> str:
        if self.signal is not None:
            return self.signal.name
        return "time budget" if self.over_budget() else ""
