"""The one way asen writes a file: a temporary file beside the target, flushed and fsynced,
then renamed over it in one step, and the folder holding it fsynced (so the rename itself
survives a power cut). A failure (or a kill) leaves the previous file intact and no
temporary file behind (the temporary is removed on any exception). A full disk is one
line (`AsenError`), not a traceback."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from asen import AsenError
from asen.signals import held_stop_signals

TEMP_PREFIX = ".asen-tmp-"  # every temporary file asen writes starts with this
FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """Make the entries of `folder` (a rename into it, a new or removed name) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (what a writer other than atomic_open, e.g. a
    copy, put there), folders after their contents; symlinks are entries of their folder."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            file = os.path.join(folder, name)
            if not os.path.islink(file):
                fd = os.open(file, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(folder)


def _drop_frames(error: BaseException) -> None:
    """Free what the failed writer left in its frames now, while nothing can report on it: a
    half-written zip (np.savez) would otherwise try to finish itself on the closed file when
    collected, printing a second traceback ('seek of closed file') after the real error."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        traceback.clear_frames(error.__traceback__)
    finally:
        sys.unraisablehook = hook


def _full_disk(error: OSError, path: Path) -> AsenError | None:
    """A full disk or quota as one line naming the file, else None."""
    reason = FULL.get(error.errno or 0)
    return (
        AsenError(f"cannot write {path}: {reason}; the previous file is intact") if reason else None
    )


@contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a binary file that replaces `path` only when the block ends without error.
    The file gets the usual umask permissions (mkstemp's 0600 would break shared folders);
    the rename is made durable by fsyncing the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        _drop_frames(error)
        full = _full_disk(error, path) if isinstance(error, OSError) else None
        if full is not None:
            raise full from None
        raise


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call `write(file)` on a temporary file, then switch it in over `path`."""
    with atomic_open(path) as fh:
        write(fh)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside `path` (usual umask permissions, not mkdtemp's 0700) for
    the block to fill; when the block ends without error it takes the place of `path` (a
    folder already there is moved aside first and removed once the new one is in place).
    On failure the temporary folder is removed and `path` is as it was. Whether `path` may
    be replaced is the caller's decision. Everything in the folder is fsynced before the
    switch, and the parent folder after it: once the block returns, the new folder survives
    a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}."))
    old = tmp.with_name(f"{tmp.name}.old")
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _fsync_tree(tmp)
        with held_stop_signals():  # a SIGTERM acts after the two renames, never between
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files that a killed asen process left in `folder` (only asen's own:
    the names start with TEMP_PREFIX). Returns what was removed."""
    removed = []
    for stale in Path(folder).glob(f"{TEMP_PREFIX}*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks (what asen records to identify
    a checkpoint, an artifact or a generated config)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
