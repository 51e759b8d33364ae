"""Processes seen through /proc, for tests that check what a launcher started or left."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[Path]:
    """The /proc folders of the processes whose parent is `pid` (one that ends while being
    read is left out; its folder may vanish before the caller reads it too)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(proc)
        except (OSError, IndexError, ValueError):
            continue
    return found
