"""An export is built in a staging folder inside the repository and switched in as one step.

`Staging` holds the new set of model folders (every precision's graphs and plans, every
`config.pbtxt`) under `<repo>/.export-XXXX/new/`. `switch` moves the repository's current
folders of the set aside into `.export-XXXX/old/` and the new ones into place: renames
within one filesystem, written down first in a journal. Any failure during the switch puts
the previous folders back; a process killed during it leaves the journal, and the next
export (`recover`) puts them back before it starts. So a failed or killed export leaves the
previous repository byte-identical, and no `.export-*` folder survives the next run.

A live export holds an exclusive lock on `.export-XXXX/.lock`; `recover` leaves those alone.

`ASEN_EXPORT_FAULT=<stage>[:fail]` is the test hook of the fault-injection tests: at that
stage the process kills itself with SIGKILL (or raises an OSError with `:fail`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from asen import AsenError
from asen.atomic import atomic_write_text
from asen.signals import held_stop_signals

PREFIX = ".export-"
LOCK, JOURNAL, NEW, OLD = ".lock", "switch.json", "new", "old"
FAULT_ENV = "ASEN_EXPORT_FAULT"
UNLOCKED_GRACE_S = 30.0  # a staging folder without its lock file yet may be just starting


def fault_point(stage: str) -> None:
    """The fault-injection hook (see the module docstring); nothing unless the variable names
    this stage."""
    where, _, how = os.environ.get(FAULT_ENV, "").partition(":")
    if where != stage:
        return
    if how == "fail":
        raise OSError(errno.EIO, f"injected failure at stage {stage}")
    os.kill(os.getpid(), signal.SIGKILL)


def _held(lock: Path) -> bool:
    """Whether a live process holds the lock of a staging folder."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def _undo(repo: Path, staging: Path, journal: dict) -> None:
    """Put the folders moved aside back, removing the new ones moved in (see `switch`)."""
    for model in journal["in"]:
        if not (staging / NEW / model).exists() and (repo / model).exists():
            shutil.rmtree(repo / model)  # the new folder of an interrupted switch
    for model in journal["out"]:
        if (staging / OLD / model).exists():
            os.replace(staging / OLD / model, repo / model)


def recover(repo: Path) -> list[Path]:
    """Roll back and remove what killed exports left in `repo`; returns the folders removed."""
    removed = []
    for staging in sorted(Path(repo).glob(f"{PREFIX}*")):
        lock = staging / LOCK
        if not staging.is_dir() or _held(lock):
            continue
        if not lock.exists() and time.time() - staging.stat().st_mtime < UNLOCKED_GRACE_S:
            continue
        journal = staging / JOURNAL
        if journal.is_file():
            _undo(Path(repo), staging, json.loads(journal.read_text()))
        shutil.rmtree(staging)
        removed.append(staging)
    return removed


class Staging:
    """A locked staging folder in `repo`; `new` is where the export writes its model set."""

    def __init__(self, repo: Path):
        self.repo = Path(repo)
        self._lock = -1
        try:
            self.path = Path(tempfile.mkdtemp(dir=self.repo, prefix=PREFIX))
        except OSError as e:
            raise AsenError(
                f"{self.repo}: cannot write to the model repository ({e.strerror})"
            ) from None
        try:
            self._lock = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            self.new = self.path / NEW
            self.new.mkdir()
        except BaseException as e:  # also a stop signal (asen/signals.py) arriving here
            self.close()
            if isinstance(e, OSError):
                raise AsenError(
                    f"{self.repo}: cannot write to the model repository ({e.strerror})"
                ) from None
            raise

    def switch(self, owned: list[str]) -> list[str]:
        """Replace the repository's folders of `owned` by the staged ones, as one step: the
        staged set comes in, the current folders of `owned` go (also those the new set
        lacks: they belong to the export being replaced). Returns the folders removed."""
        with held_stop_signals():  # a SIGTERM now acts after the switch, never inside it
            return self._switch(owned)

    def _switch(self, owned: list[str]) -> list[str]:
        incoming = sorted(p.name for p in self.new.iterdir())
        outgoing = [m for m in owned if (self.repo / m).exists()]
        journal = {"in": incoming, "out": outgoing}
        atomic_write_text(self.path / JOURNAL, json.dumps(journal))
        (self.path / OLD).mkdir()
        try:
            for i, model in enumerate(outgoing):
                os.replace(self.repo / model, self.path / OLD / model)
                if i == 0:
                    fault_point("switch-out")
            for i, model in enumerate(incoming):
                os.replace(self.new / model, self.repo / model)
                if i == 0:
                    fault_point("switch-in")
        except OSError as e:
            _undo(self.repo, self.path, journal)
            raise AsenError(
                f"{self.repo}: cannot switch the export in ({e.strerror or e}); "
                "the repository is unchanged"
            ) from None
        (self.path / JOURNAL).unlink()
        fault_point("switched")
        return [m for m in outgoing if m not in incoming]

    def close(self) -> None:
        """Remove the staging folder (and with it the previous folders after a switch)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
