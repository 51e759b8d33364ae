"""Checking where a command will write before it starts its work, so that a long run is
never lost to an output path that cannot be written at its end."""

from __future__ import annotations

import os
from pathlib import Path

from asen import AsenError


def _writable_ancestor(path: Path, option: str) -> None:
    """The nearest existing folder above `path` is a folder this process may write in."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folders below are made when the output is written
    if not folder.is_dir():
        raise AsenError(f"{option}{path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AsenError(f"{option}{path}: cannot write in {folder} (permission denied)")


def check_output_folder(path: str | Path, option: str = "") -> Path:
    """`path` is a folder that exists or can be made, and can be written in."""
    path = Path(path)
    option = f"{option} " if option else ""
    if path.exists() and not path.is_dir():
        raise AsenError(f"{option}{path}: exists and is not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise AsenError(f"{option}{path}: cannot write in this folder (permission denied)")
        return path
    _writable_ancestor(path, option)
    return path


def check_output_file(path: str | Path, option: str = "") -> Path:
    """`path` can be written as a file: not a folder, under folders that exist or can be
    made, writable. Nothing is created. `option` names the flag in the error."""
    path = Path(path)
    option = f"{option} " if option else ""
    if path.is_dir():
        raise AsenError(f"{option}{path}: is a folder; give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise AsenError(f"{option}{path}: cannot write this file (permission denied)")
    _writable_ancestor(path, option)
    return path
