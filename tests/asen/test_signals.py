"""asen.signals: stop signals as exceptions in the main process, ignored in helpers, held
while helpers are forked."""

from __future__ import annotations

import multiprocessing
import os
import signal

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


def test_a_held_signal_acts_when_the_block_ends() -> None:
    reached = []
    with pytest.raises(Stopped), stop_signals_raise():
        with held_stop_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("after the kill")  # held: the block goes on
        reached.append("not reached")
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
