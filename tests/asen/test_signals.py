"""asen.signals: stop signals as exceptions in the main process, ignored in helpers, held
while helpers are forked."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from asen.signals import (
    Stopped,
    exit_code,
    held_stop_signals,
    ignore_stop_signals,
    signal_of,
    stop_signals_raise,
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_raises_and_the_handlers_come_back(sig) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(Stopped) as info, stop_signals_raise() as received:
        os.kill(os.getpid(), sig)
        signal.pause()  # not reached: the handler raises first
    assert info.value.signum == sig and received == [sig]
    assert isinstance(info.value, KeyboardInterrupt)  # unwinds like Ctrl-C
    assert signal.getsignal(sig) is before
    assert (signal_of(info.value), exit_code(sig)) == (sig, 128 + sig)


def test_sigint_keeps_pythons_keyboard_interrupt() -> None:
    assert signal_of(KeyboardInterrupt()) == signal.SIGINT and exit_code(signal.SIGINT) == 130


def _run_python_for(seconds: float) -> None:
    """Execute bytecode for a while: a Python signal handler due now runs meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_held_signal_acts_when_the_block_ends() -> None:
    reached = []
    with pytest.raises(Stopped), stop_signals_raise():
        with held_stop_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            _run_python_for(0.3)
            reached.append("after the kill")  # held: the block goes on
        reached.append("not reached")
    assert reached == ["after the kill"]


def test_a_signal_taken_by_another_thread_is_held_too() -> None:
    """The kernel gives a process's signal to any thread not blocking it (libraries start
    threads of their own, gevent's for one): held all the same, acted on at the end."""
    release = threading.Event()
    other = threading.Thread(target=release.wait)  # started with the signals unblocked
    other.start()
    reached = []
    try:
        with pytest.raises(Stopped), stop_signals_raise():
            with held_stop_signals():
                signal.pthread_kill(other.ident, signal.SIGTERM)
                _run_python_for(0.3)
                reached.append("after the kill")
            reached.append("not reached")
    finally:
        release.set()
        other.join()
    assert reached == ["after the kill"]


def _helper(queue) -> None:
    ignore_stop_signals()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(os.getpid(), sig)
    queue.put("alive")


def test_a_helper_ignores_stop_signals_even_one_pending_from_its_fork() -> None:
    """Forked with the signals held and one already pending, the helper discards it."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with held_stop_signals():
        proc = ctx.Process(target=_helper, args=(queue,))
        proc.start()
        os.kill(proc.pid, signal.SIGTERM)  # pending in the child until it ignores it
    assert queue.get(timeout=30) == "alive"
    proc.join(30)
    assert proc.exitcode == 0


LEAKED_LOADER = """
import torch
from torch.utils.data import DataLoader, Dataset
from asen.signals import ignore_stop_signals

class Numbers(Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        return i

leaked = iter(DataLoader(Numbers(), num_workers=2, worker_init_fn=ignore_stop_signals))
next(leaked)
print("exiting")
"""


def test_a_leaked_loader_with_workers_that_ignore_sigterm_does_not_hang_the_exit() -> None:
    """multiprocessing stops daemonic children at exit with SIGTERM, which asen's DataLoader
    workers ignore: asen.signals kills them first, so the process exits."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", LEAKED_LOADER], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "exiting", done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_after_a_stop_signal_the_fd_sharer_thread_s_connection_errors_are_quiet(capfd) -> None:
    """A DataLoader worker stopped mid-handshake made multiprocessing's fd-sharer thread print
    a traceback at the end of a signalled `catalog embed`; other threads still report."""
    import threading

    from asen.signals import _quiet_fd_sharer_errors

    def fail() -> None:
        raise ConnectionResetError("peer gone")

    saved = threading.excepthook
    threading.excepthook = _quiet_fd_sharer_errors
    try:
        for name in ("Thread-3 (_serve)", "Thread-4 (work)"):
            thread = threading.Thread(target=fail, name=name)
            thread.start()
            thread.join()
    finally:
        threading.excepthook = saved
    errors = capfd.readouterr().err
    assert "Thread-4 (work)" in errors and "(_serve)" not in errors
