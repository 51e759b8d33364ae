"""asen.atomic: the one way files and folders are written, with the usual permissions."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from asen.atomic import TEMP_PREFIX, atomic_folder, atomic_write_text
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
