"""The README's tour, run as written: the ten commands between its tour markers and then
the catalog block (embed, load into Milvus Lite, search), in an empty folder, with BUDGET=1
(a minute a training stage) and free ports. It runs the real thing end to end: synthetic
data, both training stages, evaluation, ONNX export, embedding, FAISS indexing with the
served search model, a local search, the bundled tritonserver, a search through it, and a
catalog in Milvus Lite. Every process it starts is stopped at the end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from asen.client.server import free_ports

from tests.docs.docs_helpers import README, readme_block, tour_script

TOUR_TIMEOUT_S = 1200  # generous: on a heavily shared 2-core machine it took 14 minutes
# Stop the background server when the tour's shell ends, however it ends.
PRELUDE = "set -euo pipefail\ntrap 'kill -TERM $(jobs -p) 2>/dev/null; wait' EXIT\n"


def _stop_session(process: subprocess.Popen) -> None:
    """SIGTERM to the tour's whole session (asen serve stops tritonserver on it), then
    SIGKILL to whatever is left after 60 s."""
    session = [p for p in psutil.process_iter() if _session_of(p) == process.pid]
    for member in session:
        _signal(member, signal.SIGTERM)
    _, alive = psutil.wait_procs(session, timeout=60)
    for member in alive:
        _signal(member, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)


def _session_of(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


def _signal(process: psutil.Process, number: int) -> None:
    try:
        process.send_signal(number)
    except psutil.NoSuchProcess:
        pass


def _top_results(output: str) -> list[list[list[str]]]:
    """The (score, path) rows of each results table the searches printed, in order."""
    tables, rows = [], []
    for line in output.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if len(cells) >= 3 and cells[0].isdigit() and re.fullmatch(r"-?\d\.\d+", cells[1]):
            rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables + ([rows] if rows else [])


def test_the_readme_tour_runs_as_written_with_budget_1(tmp_path: Path) -> None:
    ports = free_ports()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "BUDGET": "1",
        "HTTP_PORT": str(ports["http_port"]),
        "GRPC_PORT": str(ports["grpc_port"]),
        "METRICS_PORT": str(ports["metrics_port"]),
    }
    readme = README.read_text()
    script = PRELUDE + tour_script(readme) + readme_block(readme, "catalog")
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TOUR_TIMEOUT_S)
    finally:
        _stop_session(process)
    serve_log = (tmp_path / "serve.log").read_text() if (tmp_path / "serve.log").exists() else ""
    assert process.returncode == 0, output[-6000:] + serve_log[-3000:]
    assert "asen_search" in serve_log
    tables = _top_results(output)
    assert len(tables) == 2, output[-6000:]
    local, served = tables
    assert len(local) == 10
    assert [row[-1] for row in local] == [row[-1] for row in served]
    assert re.search(r"loaded 500 items into \w+; it holds 500", output), output[-3000:]
    catalog_hits = re.findall(r"^\W*1\W+(\S+\.png)\W+([\d.]+)", output, flags=re.M)
    assert catalog_hits and catalog_hits[-1][0] == "000001.png", output[-3000:]  # itself first
    assert not [p for p in psutil.process_iter() if _session_of(p) == process.pid]
