"""The run folder (`--out`): its files, the lock that keeps a second run out, the cleanup
of a killed run's temporaries, and metrics.jsonl kept equal to the checkpoint's records."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from asen import AsenError
from asen.atomic import atomic_write, remove_stale_temporaries
from asen.training.faults import fault_point

LOCK_NAME = ".asen-train.lock"


class RunFolder:
    """Paths of one run: last.pt (the resume point and the single source of truth),
    best.pt, metrics.jsonl (one JSON record a line, rewritten from the checkpoint)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.metrics = self.path / "metrics.jsonl"
        self.lock_file = self.path / LOCK_NAME

    def check(self, *, resume: bool) -> None:
        """Refuse an --out that is a file, a fresh run over a saved one, a resume of nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise AsenError(f"{self.path}: --out exists and is not a folder")
        if self.last.exists() and not resume:
            raise AsenError(
                f"{self.path}: holds a run already; pass --resume to continue it "
                "or choose another --out"
            )
        if resume and not self.last.exists():
            raise AsenError(f"{self.last}: nothing to resume (no last.pt in the run folder)")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder (created if needed) for the block. The lock
        is the kernel's (flock): a killed run's lock goes with its process, so a stale lock
        file never blocks. A folder this block created and left empty is removed again."""
        if self.path.exists() and not self.path.is_dir():
            raise AsenError(f"{self.path}: --out exists and is not a folder")
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AsenError(
                    f"{self.path}: another asen train is running in this folder (it holds "
                    f"{self.lock_file.name}); wait for it to end or choose another --out"
                ) from None
            yield
        finally:
            if created and {p.name for p in self.path.iterdir()} == {LOCK_NAME}:
                self.lock_file.unlink(missing_ok=True)
                self.path.rmdir()
            os.close(fd)  # releases the lock

    def start(self, records: list[dict]) -> list[Path]:
        """Under the lock, before training: remove a killed run's temporaries, and make
        metrics.jsonl hold exactly the checkpoint's records (none for a fresh run), so that
        a record written after the checkpoint it belongs to is never counted twice and a
        fresh run never continues a dead run's file. Returns the temporaries removed."""
        removed = remove_stale_temporaries(self.path)
        current = self.read_metrics() if self.metrics.exists() else []
        if current != records:
            self.write_metrics(records)
        return removed

    def read_metrics(self) -> list[dict]:
        """The whole records of metrics.jsonl (a torn or foreign line is left out)."""
        records = []
        for line in self.metrics.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def write_metrics(self, records: list[dict]) -> None:
        """Replace metrics.jsonl with `records` in one step (never appended: no torn line)."""
        text = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")

        def write(fh) -> None:
            fh.write(text)
            fault_point("metrics")

        atomic_write(self.metrics, write)
