"""How asen's long-running commands treat SIGTERM, SIGINT and SIGHUP (docs/robustness.md).

A scheduler, systemd or a shell's job control signals the whole process group, so every
helper process asen starts (DataLoader workers, perf_analyzer, tritonserver) receives the
signal too. Helpers leave it to the main process, which stops them itself, in order:

- `ignore_stop_signals`: a DataLoader `worker_init_fn`; workers ignore the stop signals.
- `held_stop_signals`: holds them in the main thread while helpers are forked, a folder is
  switched or a client is made, so a signal arriving in between is neither lost for the
  main process nor acted on by a helper before it could ignore it (the child inherits the
  blocked mask, `ignore_stop_signals` sets SIG_IGN, which discards a pending one, then
  unblocks), nor raised half-way through.
- `stop_signals_raise`: while active, SIGTERM / SIGHUP raise `Stopped` (a
  KeyboardInterrupt, as SIGINT raises), so `finally` blocks stop helpers and remove
  temporary folders; `exit_code` is the command's documented code for the signal.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers its exit handler first, so ours below runs before it
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """In a helper process (a DataLoader worker): ignore SIGTERM, SIGINT and SIGHUP, and
    unblock them (a pending one is discarded); the main process stops this one itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _kill_daemonic_children() -> None:
    """At exit, multiprocessing stops daemonic children with SIGTERM and then joins them. A
    DataLoader worker ignores SIGTERM (`ignore_stop_signals`), so one still running then
    (its loader never closed) would keep this process from exiting: kill them first. The
    SIGCHLD handler PyTorch installs for its workers is reset, so their end is no error."""
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if not children:
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        child.join(5)


atexit.register(_kill_daemonic_children)  # atexit runs last-registered first


@contextmanager
def held_stop_signals() -> Iterator[None]:
    """Hold the stop signals for the block (main thread only): one that arrives meanwhile is
    acted on when the block ends. They are blocked in this thread, so a helper forked
    meanwhile inherits the block and cannot act on one before it ignores them; and their
    handlers only note them, as the kernel hands a process's signal to any thread that does
    not block it, and libraries start threads of their own (gevent's, for one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    handlers = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a pending one is acted on
        for sig in dict.fromkeys(noted):
            signal.raise_signal(sig)


class Stopped(KeyboardInterrupt):
    """A stop signal turned into an exception (SIGTERM or SIGHUP; SIGINT raises a plain
    KeyboardInterrupt): it unwinds like Ctrl-C, through every `finally`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(error: BaseException) -> int:
    """The signal an interruption stands for: a `Stopped`'s, else SIGINT (Ctrl-C)."""
    return error.signum if isinstance(error, Stopped) else int(signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's convention for a command ended by a signal: 128 + its number (130 for
    SIGINT, 143 for SIGTERM, 129 for SIGHUP)."""
    return 128 + int(signum)


def stop_line(signum: int) -> str:
    """What a command says when a stop signal ended it."""
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def _quiet_fd_sharer_errors(args: threading.ExceptHookArgs) -> None:
    """After a stop signal: a connection error in multiprocessing's file-descriptor sharer
    thread (`resource_sharer._serve`, which hands DataLoader workers' shared-memory tensors
    to this process) is a worker stopped mid-handshake, not a fault; anything else is
    reported as before."""
    sharer = args.thread is not None and args.thread.name.endswith("(_serve)")
    if sharer and issubclass(
        args.exc_type, (OSError, EOFError, multiprocessing.AuthenticationError)
    ):
        return
    threading.__excepthook__(args)


@contextmanager
def stop_signals_raise() -> Iterator[list[int]]:
    """While active (main thread only), SIGTERM and SIGHUP raise `Stopped` where the main
    thread is, as SIGINT raises KeyboardInterrupt; yields the list of signals received.
    The previous handlers come back when the block ends."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        threading.excepthook = _quiet_fd_sharer_errors
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
