"""asen.training.heap: freed activations stay in the process (no page faults on reuse)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

FAULTS = """
import resource, sys, torch
from asen.training.heap import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
MIB = (40, 8, 64, 40)
def faults_of_one_step():  # like a training step: activations held together, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [torch.ones(mib * 2**20 // 4) for mib in MIB]
    del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
steps = [faults_of_one_step() for _ in range(12)]
settled = steps[-4:]  # the heap settles in the first steps (fragmentation)
print(took, min(settled), max(settled))
"""


def _faults(mode: str) -> tuple[str, int, int]:
    """Whether keeping took, and the fewest and most page faults of the settled steps."""
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1]), int(out[2])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    took, _, kept = _faults("keep")  # the worst settled step
    _, default, _ = _faults("default")  # the best settled step
    pages = (40 + 8 + 64 + 40) * 2**20 // 4096
    assert took == "True"
    assert default >= pages // 2  # glibc maps the blocks afresh every step
    assert kept < pages // 20  # settled: every later step reuses the kept blocks
