"""asen.atomic: the one way files and folders are written, with the usual permissions."""

from __future__ import annotations

import errno
import gc
import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asen import AsenError
from asen.atomic import TEMP_PREFIX, atomic_folder, atomic_write_bytes, atomic_write_text
from asen.checkpoint import atomic_save
from asen.evaluate import EmbeddedSplit
from asen.search import SearchIndex


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _split(n: int = 12, dim: int = 4) -> EmbeddedSplit:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    return EmbeddedSplit(
        embeddings=emb / np.linalg.norm(emb, axis=1, keepdims=True),
        image_ids=np.arange(n),
        attributes=np.arange(n) % 2,
        values=np.arange(n) % 3,
        is_query=np.arange(n) < 2,
        paths=[f"{i}.png" for i in range(n)],
    )


def test_checkpoints_npz_and_index_folders_get_umask_permissions(tmp_path, umask_022) -> None:
    atomic_save({"x": torch.ones(1)}, tmp_path / "last.pt")
    _split().save(tmp_path / "e.npz", ["a", "b"])
    SearchIndex.build(_split(), ["a", "b"]).save(tmp_path / "index")
    assert _mode(tmp_path / "last.pt") == 0o644
    assert _mode(tmp_path / "e.npz") == 0o644
    assert _mode(tmp_path / "index") == 0o755
    assert {_mode(p) for p in (tmp_path / "index").iterdir()} == {0o644}


def test_a_folder_replaces_the_old_one_only_when_complete(tmp_path) -> None:
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        atomic_write_text(tmp / "a.txt", "1")
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        atomic_write_text(tmp / "a.txt", "2")
        raise RuntimeError("killed half-way")
    assert (target / "a.txt").read_text() == "1"
    with atomic_folder(target) as tmp:
        atomic_write_text(tmp / "b.txt", "3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


# ------------------------------------------------------------ durability: fsync of folders


@pytest.fixture
def fsyncs(monkeypatch) -> list[tuple[str, str]]:
    """Every os.fsync call as (the path its descriptor names, 'dir' or 'file')."""
    calls: list[tuple[str, str]] = []
    real = os.fsync

    def traced(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), kind))
        real(fd)

    monkeypatch.setattr(os, "fsync", traced)
    return calls


def test_a_file_rename_is_followed_by_an_fsync_of_its_folder(tmp_path, monkeypatch) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    held_at_folder_sync = []
    real = os.fsync

    def check(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            held_at_folder_sync.append((os.readlink(f"/proc/self/fd/{fd}"), target.read_text()))
        real(fd)

    monkeypatch.setattr(os, "fsync", check)
    atomic_write_text(target, "new")
    assert held_at_folder_sync == [(str(tmp_path), "new")]  # after the rename, not before


def test_fsync_order_file_then_folder(tmp_path, fsyncs) -> None:
    atomic_write_text(tmp_path / "a.txt", "x")
    kinds = [(Path(p).name if k == "file" else p, k) for p, k in fsyncs]
    assert [k for _, k in kinds] == ["file", "dir"]
    assert kinds[0][0].startswith(f"{TEMP_PREFIX}a.txt.")  # the temporary, before its rename
    assert kinds[1][0] == str(tmp_path)


def test_a_folder_switch_is_durable(tmp_path, fsyncs) -> None:
    """Everything in the new folder (even a file written without atomic_open) is fsynced
    before the switch, the parent folder after it."""
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "copied.bin").write_bytes(b"1")  # as a copy would write it
        fsyncs.clear()
    names = list(fsyncs)
    assert (str(tmp / "sub" / "copied.bin"), "file") in names
    assert (str(tmp / "sub"), "dir") in names and (str(tmp), "dir") in names
    assert names[-1] == (str(tmp_path), "dir")  # the parent, last: after the rename
    assert names.index((str(tmp / "sub" / "copied.bin"), "file")) < names.index((str(tmp), "dir"))
    assert (target / "sub" / "copied.bin").read_bytes() == b"1"


# ---------------------------------------------------------------------------- a full disk


@pytest.fixture
def full_disk(tmp_path, monkeypatch) -> Path:
    """A folder on a 64 KiB tmpfs where the machine lets this process mount one (root);
    elsewhere a folder whose atomic writes fail with ENOSPC after 16 KiB (the same OSError
    the kernel gives)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = bool(os.geteuid() == 0 and shutil.which("mount")) and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not mounted:
        real_fdopen = os.fdopen

        class Full(io.BufferedWriter):
            written = 0

            def write(self, data) -> int:
                Full.written += len(data)
                if Full.written > 16 << 10:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return super().write(data)

        def fdopen(fd, mode="r", *args, **kwargs):
            if mode == "wb" and str(folder) in os.readlink(f"/proc/self/fd/{fd}"):
                return Full(io.FileIO(fd, "w"))
            return real_fdopen(fd, mode, *args, **kwargs)

        monkeypatch.setattr(os, "fdopen", fdopen)
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_full_disk_is_one_line_and_keeps_the_previous_file(full_disk, capsys) -> None:
    out = full_disk / "e.npz"
    _split(n=4).save(out, ["a", "b"])
    before = out.read_bytes()
    with pytest.raises(AsenError, match=r"e\.npz: no space left on device; the previous file"):
        _split(n=20000, dim=8).save(out, ["a", "b"])
    gc.collect()
    assert out.read_bytes() == before
    assert not [p for p in full_disk.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert "Traceback" not in capsys.readouterr().err  # no second error from the half zip


def test_embed_on_a_full_disk_is_one_line(full_disk, tmp_path) -> None:
    """`asen embed` onto a full disk: one line, exit 1, the previous file intact."""
    if not os.path.ismount(full_disk):  # the simulated full disk lives in this process
        pytest.skip("no tmpfs could be mounted here (needs root): the library test covers it")
    from asen.checkpoint import atomic_save, make_checkpoint
    from asen.config import AttributeSpec, load_config
    from asen.data.synthetic import DEFAULT_ATTRIBUTES, generate
    from asen.model.asen import ASENPP

    cfg = load_config(["small"], ["model.image_size=32", "model.local_size=24"])
    attributes = [AttributeSpec(n, v) for n, v in DEFAULT_ATTRIBUTES.items()]
    atomic_save(
        make_checkpoint(ASENPP(cfg.model, len(attributes), 1), cfg, attributes), tmp_path / "m.pt"
    )
    generate(tmp_path / "data", seed=1, n_train=10, n_eval=200)
    out = full_disk / "test.npz"
    atomic_write_bytes(out, b"previous")
    code = (
        f"import sys; sys.argv = ['asen', 'embed', {str(tmp_path / 'm.pt')!r}, '--data', "
        f"{str(tmp_path / 'data')!r}, '--out', {str(out)!r}, '--workers', '0']\n"
        "from asen.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]  # progress lines come before it
    assert errors == lines[-1:] and "no space left on device" in errors[0], result.stderr
    assert out.read_bytes() == b"previous"
