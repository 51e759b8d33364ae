"""`asen serve` and `start_server`: clean shutdown leaving no process, one-line errors for a
taken port, a model that fails to load, no server at all, and a server that dies mid-run."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import asen.client.server
import numpy as np
import pytest
import tritonclient.grpc
import tritonclient.http
from asen.client.server import launch, start_server
from asen.client.triton import TritonEncoder
from PIL import Image
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app
from asen.config import load_config
from asen.data.splits import open_dataset
from asen.evaluate import embed_split
from tests.client.serve_process import serve_process
from tests.processes import children

runner = CliRunner()


def gone(pgid: int) -> bool:
    """No process is left in the group (the server and its Python stubs)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode == 1
    return False


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_command_stops_cleanly(repo, tmp_path, ports, sig) -> None:
    p = ports
    log = tmp_path / "server.log"
    with serve_process(repo, log, p) as (proc, out):
        assert "Ctrl-C to stop" in out, out
        assert f"gRPC 127.0.0.1:{p['grpc_port']}" in out and "ready: asen, asen_onnx" in out
        assert "asen_onnx" in out and ("ONNX Runtime inside" in out or "onnxruntime backend" in out)
        pid = int(out.split("(pid ")[1].split(")")[0])
        with TritonEncoder(f"127.0.0.1:{p['grpc_port']}") as enc:
            assert enc.model == "asen_onnx"
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "tritonserver stopped" in rest
    assert gone(pid)
    assert log.stat().st_size > 0


def test_start_server_context_leaves_nothing(repo, tmp_path, ports) -> None:
    with start_server(repo, log_file=tmp_path / "log", **ports) as handle:
        pid, run_dir = handle.process.pid, handle.run_dir
        assert handle.models == ["asen", "asen_onnx", "asen_preprocess"]
    assert gone(pid) and not run_dir.exists()
    assert not list(repo.rglob("__pycache__"))  # the repository stays as exported


def test_port_in_use_is_checked_before_starting(repo, tmp_path, ports) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        p = {**ports, "grpc_port": taken}
        with pytest.raises(AsenError, match=f"--grpc-port {taken}: cannot listen on 127.0.0.1"):
            launch(repo, log_file=tmp_path / "log", **p)
    assert not (tmp_path / "log").exists()  # nothing was started


def test_model_that_fails_to_load_shows_tritons_message(repo, tmp_path, ports) -> None:
    broken = tmp_path / "models"
    shutil.copytree(repo, broken)
    model = broken / "asen_preprocess" / "1" / "model.py"
    model.write_text(model.read_text().replace('["source_size"]', '["no_such_parameter"]'))
    with pytest.raises(AsenError) as info:
        launch(broken, log_file=tmp_path / "log", **ports).stop()
    message = str(info.value)
    assert "exited (code 1) while starting: model asen_preprocess failed to load" in message
    assert "KeyError: 'no_such_parameter'" in message and str(tmp_path / "log") in message
    assert "\n" not in message


def test_missing_repository_and_server(tmp_path, monkeypatch, ports) -> None:
    with pytest.raises(AsenError, match="no such model repository"):
        launch(tmp_path / "nothing", **ports)
    monkeypatch.setattr(asen.client.server.shutil, "which", lambda name: None)
    monkeypatch.setattr(asen.client.server.importlib.util, "find_spec", lambda name: None)
    result = runner.invoke(app, ["serve", "--repo", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith("error: no tritonserver found: run inside NVIDIA's Triton")


def test_server_dying_mid_run_is_an_error_and_saves_nothing(repo, synth, tmp_path, ports) -> None:
    out = tmp_path / "gallery.npz"
    with start_server(repo, log_file=tmp_path / "log", **ports) as handle:
        enc = TritonEncoder(handle.grpc_url, retries=2)
        dataset = open_dataset(synth, enc.info.attributes)

        def kill_server(n: int) -> None:  # after the first batch, the server dies
            os.killpg(handle.process.pid, signal.SIGKILL)
            handle.process.wait()

        with pytest.raises(AsenError, match="unreachable mid-run"):
            embed_split(enc, dataset, "test", batch_size=8, workers=0, progress=kill_server)
        enc.close()
        args = ["embed", "asen", "--data", synth, "--out", out, "--backend", "triton"]
        result = runner.invoke(app, [*map(str, args), "--url", handle.grpc_url, "--workers", "0"])
        assert result.exit_code == 1 and "is unreachable" in result.output
        assert not out.exists()
    assert gone(handle.process.pid)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_serve_killed_leaves_no_process(repo, tmp_path, ports, sig) -> None:
    """`asen serve` killed outright, or its terminal closed: within 5 s nothing is left of
    the server, its Python-backend stubs (which outlive a killed tritonserver) or the
    watchdog, and the ports are free again."""
    with serve_process(repo, tmp_path / "server.log", ports) as (proc, out):
        assert "Ctrl-C to stop" in out, out
        server = int(out.split("(pid ")[1].split(")")[0])
        stubs = [int(p.name) for p in children(server)]
        watchdog = [int(p.name) for p in children(proc.pid) if int(p.name) != server]
        assert stubs and watchdog, (stubs, watchdog)  # what is checked below exists
        proc.send_signal(sig)
        deadline = time.monotonic() + 5.0
        left = [server, *stubs, *watchdog]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [pid for pid in left if running(pid)]
        proc.communicate(timeout=30)
    assert not left, f"still running 5 s after {sig.name}: {left}"
    asen.client.server.check_ports("127.0.0.1", {f"--{k}": v for k, v in ports.items()})


def test_stale_server_of_ours_is_named_with_how_to_stop_it(repo, tmp_path, ports) -> None:
    with start_server(repo, log_file=tmp_path / "log", **ports) as handle:
        pid = handle.process.pid
        with pytest.raises(AsenError) as info:
            launch(repo, log_file=tmp_path / "second.log", **ports)
    message = str(info.value)
    assert f"--http-port {ports['http_port']}: cannot listen" in message
    assert f"`asen serve` started (pid {pid}) still listens there" in message
    assert f"`kill -- -{pid}`" in message and "\n" not in message


def test_one_port_for_http_and_grpc_shows_tritons_reason(repo, tmp_path, ports) -> None:
    same = {**ports, "grpc_port": ports["http_port"]}
    with pytest.raises(AsenError) as info:
        launch(repo, log_file=tmp_path / "log", **same).stop()
    message = str(info.value)
    assert "cannot listen to HTTP requests and GRPC requests at the same address" in message
    assert "Usage" not in message and "\n" not in message


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_mistakes_are_invalid_argument(server, protocol) -> None:
    """A bad attribute id (encoder and ensemble) or an undecodable image is the caller's
    mistake: INVALID_ARGUMENT (HTTP 400), not INTERNAL, with the one-line reason."""
    module = tritonclient.grpc if protocol == "grpc" else tritonclient.http
    url = server.grpc_url if protocol == "grpc" else server.http_url
    invalid = "StatusCode.INVALID_ARGUMENT" if protocol == "grpc" else "400"
    size = load_config(["small"]).model.source_size  # the conftest model's S

    def tensor(name: str, array: np.ndarray, dtype: str):
        t = module.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    png = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(png, "PNG")
    requests = {
        "attribute id 9 out of range": (
            "asen_onnx",
            [
                tensor("image", np.zeros((1, 3, size, size), np.uint8), "UINT8"),
                tensor("attribute", np.array([[9]], np.int64), "INT64"),
            ],
        ),
        "attribute id 7 out of range": (
            "asen",
            [
                tensor("image_bytes", np.array([[png.getvalue()]], dtype=object), "BYTES"),
                tensor("attribute", np.array([[7]], np.int64), "INT64"),
            ],
        ),
        "image_bytes[0]: cannot decode image": (
            "asen",
            [
                tensor("image_bytes", np.array([[b"not an image"]], dtype=object), "BYTES"),
                tensor("attribute", np.array([[0]], np.int64), "INT64"),
            ],
        ),
    }
    with module.InferenceServerClient(url) as triton:
        for reason, (model, inputs) in requests.items():
            with pytest.raises(InferenceServerException) as info:
                triton.infer(model, inputs)
            assert str(info.value.status()) == invalid, (model, info.value)
            assert reason in info.value.message() and "\n" not in info.value.message()


def test_ctrl_c_while_the_banner_prints_stops_cleanly(repo, tmp_path, ports) -> None:
    """A Ctrl-C that lands as `asen serve` prints "Ctrl-C to stop" (before it waits) stops
    the server as cleanly as one that lands later: no KeyboardInterrupt, nothing left."""

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    with start_server(repo, log_file=tmp_path / "log", **ports) as handle:
        asen.client.server.serve_until_stopped(handle, announce=ctrl_c)
        assert gone(handle.process.pid)


def test_a_failed_check_leaves_no_serve_behind(repo, tmp_path, ports) -> None:
    """The tests' own `serve_process` stops `asen serve` and its server when the body fails."""
    with pytest.raises(AssertionError, match="a failed check"):
        with serve_process(repo, tmp_path / "server.log", ports) as (proc, out):
            server = int(out.split("(pid ")[1].split(")")[0])
            raise AssertionError("a failed check")
    assert proc.returncode == 0 and not running(server)
