"""benchmarks/bench_import.py at its smallest size: run as a module from the repository root,
it imports from its local HTTP server with a cold and a warm cache and writes valid figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from benchmarks import bench_import, harness

ROOT = Path(__file__).resolve().parents[2]


def test_images_are_all_different(tmp_path) -> None:
    names = bench_import.write_images(tmp_path, 12)
    contents = {(tmp_path / name).read_bytes() for name in names}
    assert len(contents) == len(names) == 12


def test_tree_sync_timer_times_and_restores_the_tree_fsync(tmp_path) -> None:
    from asen import atomic

    original = atomic._fsync_tree
    with bench_import.TreeSyncTimer() as timer, atomic.atomic_folder(tmp_path / "d") as tmp:
        (tmp / "f").write_bytes(b"x")
    assert timer.seconds > 0 and atomic._fsync_tree is original
    assert (tmp_path / "d" / "f").read_bytes() == b"x"


def test_smallest_run_prints_and_writes_figures(tmp_path) -> None:
    figures = tmp_path / "import.json"
    command = [sys.executable, "-m", "benchmarks.bench_import", "--images", "40"]
    command += ["--rounds", "1", "--work", str(tmp_path), "--figures", str(figures)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert printed["images"] == 40 and printed["file_system"] != "unknown"
    for variant in ("cold", "warm"):
        found = printed[variant]
        assert len(found["seconds"]) == 1 and found["median_s"] == found["seconds"][0]
        assert 0 < found["tree_fsync_s"] < found["median_s"]
        shown = found["seconds"][0]  # rounded to 1 ms: images/s lies between its bounds
        assert 40 / (shown + 0.0005) - 0.05 <= found["images_per_s"] <= 40 / (shown - 0.0005) + 0.05
    doc = json.loads(figures.read_text())
    jsonschema.validate(doc, harness.FIGURES_SCHEMA)
    assert [row[0] for row in doc["rows"]] == ["cold", "warm"]
    assert doc["rows"][1][4] == printed["warm"]["images_per_s"]
    assert not [p for p in tmp_path.iterdir() if p != figures]  # the work folder is removed
