"""`asen serve` supervises tritonserver: the oversized request that makes the bundled server
abort (std::bad_alloc) is survived: the server is restarted with backoff, one line says so,
the status file counts it, and every later request succeeds."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http
from asen.client.supervise import RESTART_DELAYS_S, describe_exit, status_path

from tests.client.serve_process import serve_process
from tests.client.test_serve import gone

# the request from the bug report: a shape of 4.9e13 bytes with one value of data
CRASH_BODY = json.dumps(
    {
        "inputs": [
            {"name": "image", "shape": [1000000000, 3, 128, 128], "datatype": "UINT8", "data": [0]}
        ]
    },
    separators=(",", ":"),
)


class Lines:
    """The output of a running `asen serve`, collected by a thread."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds until a line containing `text` appeared (fails after `timeout`)."""
        start = time.monotonic()
        while not any(text in line for line in self.lines):
            assert time.monotonic() - start < timeout, "".join(self.lines)
            time.sleep(0.05)
        return time.monotonic() - start


def _send_crash(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v2/models/asen_onnx/infer", body=CRASH_BODY)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        connection.getresponse().read()  # the server aborts without answering


def _wait_ready(port: int, timeout: float) -> float:
    client = tritonclient.http.InferenceServerClient(f"127.0.0.1:{port}")
    start = time.monotonic()
    while True:
        try:
            if client.is_server_ready() and client.is_model_ready("asen_onnx"):
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - refused while it restarts
            pass
        assert time.monotonic() - start < timeout, "not ready again"
        time.sleep(0.1)


def _good_requests(port: int, count: int) -> list[np.ndarray]:
    client = tritonclient.http.InferenceServerClient(f"127.0.0.1:{port}")
    meta = client.get_model_metadata("asen_onnx")
    size = int(meta["inputs"][0]["shape"][-1])
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        image = tritonclient.http.InferInput("image", [1, 3, size, size], "UINT8")
        image.set_data_from_numpy(rng.integers(0, 256, (1, 3, size, size), dtype=np.uint8))
        attribute = tritonclient.http.InferInput("attribute", [1, 1], "INT64")
        attribute.set_data_from_numpy(np.array([[i % 4]], dtype=np.int64))
        result = client.infer("asen_onnx", [image, attribute])
        out.append(result.as_numpy("embedding"))
    return out


def test_the_crashing_request_is_survived(repo, tmp_path, ports) -> None:
    """The request from the bug report aborts tritonserver; `asen serve` starts it again
    within 10 s, says so in one line, counts it, and the next 100 requests all succeed."""
    log = tmp_path / "server.log"
    with serve_process(repo, log, ports) as (proc, out):
        assert "Ctrl-C to stop" in out, out
        first = int(out.split("(pid ")[1].split(")")[0])
        status = json.loads(status_path(log).read_text())
        assert (status["state"], status["restarts"]) == ("ready", 0)
        lines = Lines(proc.stdout)
        crashed = time.monotonic()
        _send_crash(ports["http_port"])
        said = lines.wait_for("tritonserver exited unexpectedly", timeout=10)
        ready = _wait_ready(ports["http_port"], timeout=120)
        print(f"restart line after {said:.1f} s, ready again {time.monotonic() - crashed:.1f} s")
        restart_lines = [ln for ln in lines.lines if "exited unexpectedly" in ln]
        assert len(restart_lines) == 1, lines.lines
        assert "signal SIGABRT" in restart_lines[0] and "restart 1" in restart_lines[0]
        embeddings = _good_requests(ports["http_port"], 100)
        assert len(embeddings) == 100 and all(e.shape[0] == 1 for e in embeddings)
        assert all(np.isclose(np.linalg.norm(e), 1.0, atol=1e-3) for e in embeddings)
        status = json.loads(status_path(log).read_text())
        assert (status["state"], status["restarts"]) == ("ready", 1)
        assert status["last_exit"] == -signal.SIGABRT and status["tritonserver_pid"] != first
        assert gone(first)
        second = status["tritonserver_pid"]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, "".join(lines.lines)
    assert gone(second)
    assert "[asen serve] tritonserver exited unexpectedly" in log.read_text()
    assert json.loads(status_path(log).read_text())["state"] == "stopped"
    assert ready < 120


def test_exit_descriptions_and_backoff() -> None:
    assert describe_exit(-6) == "signal SIGABRT" and describe_exit(1) == "code 1"
    assert describe_exit(-200) == "signal 200"
    assert RESTART_DELAYS_S[0] <= 1 and max(RESTART_DELAYS_S) < 10  # restarts start within 10 s
    assert list(RESTART_DELAYS_S) == sorted(RESTART_DELAYS_S)
    assert status_path(Path("/x/tritonserver.log")) == Path("/x/tritonserver.status.json")
