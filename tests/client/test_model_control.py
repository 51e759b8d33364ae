"""Model control in the real tritonserver: with `explicit`, a new encoder version (an export
with `--model-version next`) and a new `asen_search` gallery version are loaded through
Triton's repository API while clients send requests at concurrency 4: the new version
answers within 30 s, no request fails, and the server is never restarted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from asen.client.model_control import (
    ViewSync,
    control_flags,
    reload_models,
    written_versions,
)
from asen.client.search import ServedSearch
from asen.client.server import build_view, free_ports, plan_models, start_server

from asen import AsenError
from asen.checkpoint import atomic_save, make_checkpoint
from asen.config import load_config
from asen.model.asen import ASENPP
from tests.client.conftest import ATTRIBUTES
from tests.client.search_world import build_search_repo, invoke

CONCURRENCY = 4
SWITCH_LIMIT_S = 30.0


def test_control_flags() -> None:
    assert control_flags("none") == ["--model-control-mode=none"]
    assert control_flags("explicit") == ["--model-control-mode=explicit", "--load-model=*"]
    assert control_flags("poll")[0] == "--model-control-mode=poll"
    with pytest.raises(AsenError, match="--model-control 'auto': expected one of none, expl"):
        control_flags("auto")


def test_written_versions(tmp_path: Path) -> None:
    written = [
        tmp_path / "asen_onnx" / "2" / "model.onnx",
        tmp_path / "asen_onnx" / "2" / "model.json",
        tmp_path / "asen" / "config.pbtxt",
    ]
    assert written_versions(tmp_path, written) == {"asen_onnx": [2], "asen": []}


def test_view_sync_follows_the_repository(repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "models"
    source.mkdir()
    for model in ("asen_onnx", "asen_preprocess", "asen"):
        _copy_model(repo / model, source / model)
    backends = {"python", "ensemble"}
    choices = plan_models(source, backends)
    view = build_view(source, choices, tmp_path / "view")
    sync = ViewSync(source, view, backends, tmp_path)
    sync.start()
    sync.stop()
    assert sync.sync() == []  # the view built at start is the repository
    _copy_model(repo / "asen_onnx" / "1", source / "asen_onnx" / "2")
    assert sync.sync() == ["asen_onnx"]
    linked = view / "asen_onnx" / "2" / "model.onnx"
    assert linked.is_symlink() and linked.resolve() == (source / "asen_onnx/2/model.onnx")
    _remove(source / "asen_onnx" / "1")
    assert sync.sync() == ["asen_onnx"] and not (view / "asen_onnx" / "1").exists()
    assert sorted(p.name for p in view.iterdir()) == ["asen", "asen_onnx", "asen_preprocess"]


def _copy_model(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target)


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder)


class Load:
    """`CONCURRENCY` threads sending `request` back to back until `stop`; each request's
    outcome is kept (the answer's model version, or the error)."""

    def __init__(self, request: Callable[[], str]):
        self.request, self.answers, self.failures = request, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(CONCURRENCY)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append((time.time(), self.request()))
            except Exception as e:  # every failure counts, whatever its kind
                self.failures.append(f"{type(e).__name__}: {e}")

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def first(self, answer: str, after: float) -> float | None:
        """When `answer` was first seen after `after`."""
        times = [t for t, a in list(self.answers) if a == answer and t >= after]
        return min(times) if times else None


@pytest.fixture(scope="module")
def world(repo, synth, tmp_path_factory) -> dict:
    """The exported model and an `asen_search` gallery, served with explicit model control."""
    root = tmp_path_factory.mktemp("control")
    built = build_search_repo(repo, synth, root)
    log = root / "triton.log"
    with start_server(
        built["repo"], log_file=log, model_control="explicit", **free_ports()
    ) as server:
        yield {**built, "server": server, "root": root}


def _encoder_request(url: str, size: int) -> Callable[[], str]:
    """One request to the latest `asen_onnx` version; returns the version that answered."""
    local = threading.local()

    def request() -> str:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url)
        image = grpcclient.InferInput("image", [1, 3, size, size], "UINT8")
        image.set_data_from_numpy(np.zeros((1, 3, size, size), np.uint8))
        attribute = grpcclient.InferInput("attribute", [1, 1], "INT64")
        attribute.set_data_from_numpy(np.zeros((1, 1), np.int64))
        result = local.client.infer("asen_onnx", [image, attribute], client_timeout=20)
        return result.get_response().model_version

    return request


def _wait_for(load: Load, answer: str, since: float) -> float:
    deadline = since + SWITCH_LIMIT_S
    while time.time() < deadline:
        seen = load.first(answer, since)
        if seen is not None:
            return seen - since
        time.sleep(0.1)
    raise AssertionError(
        f"version {answer} did not answer within {SWITCH_LIMIT_S:.0f} s "
        f"(answers {len(load.answers)}, failures {load.failures[:2]})"
    )


def test_a_new_encoder_version_without_a_restart(world, checkpoint, max_batch) -> None:
    server, repo = world["server"], world["repo"]
    pid = server.process.pid
    cfg = load_config(["small"], ["model.threshold=0.8"])
    torch.manual_seed(5)
    other = world["root"] / "other.pt"
    atomic_save(make_checkpoint(ASENPP(cfg.model, len(ATTRIBUTES), 2), cfg, ATTRIBUTES), other)
    size = cfg.model.image_size * 2
    with Load(_encoder_request(server.grpc_url, size)) as load:
        _wait_for(load, "1", time.time())
        assert load.failures == [], load.failures[:3]
        invoke(
            "export",
            other,
            "--repo",
            repo,
            "--max-batch",
            max_batch,
            "--model-version",
            "next",
            "--reload",
            server.http_url,
        )
        start = (repo / "asen_onnx" / "2").stat().st_mtime  # written, before the switch
        switch = _wait_for(load, "2", start)
        time.sleep(1.0)  # keep serving after the switch
    assert load.failures == [], load.failures[:3]
    assert switch <= SWITCH_LIMIT_S
    assert server.alive() and server.process.pid == pid  # the same server: no restart
    served = {(m["name"], m.get("version")) for m in server.index() if m["state"] == "READY"}
    assert {("asen_onnx", "1"), ("asen_onnx", "2")} <= served
    print(f"version 2 answered {switch:.1f} s after it was written; {len(load.answers)} requests")


def test_a_new_gallery_version_without_a_restart(world, synth) -> None:
    server, repo = world["server"], world["repo"]
    pid = server.process.pid
    image = sorted((synth / "images" / "test").iterdir())[0].read_bytes()
    local = threading.local()

    def request() -> str:
        if not hasattr(local, "client"):
            local.client = ServedSearch(server.grpc_url)
        assert len(local.client.search(image, "pattern", 3)) == 3
        return "ok"

    with Load(request) as load:
        time.sleep(1.0)
        before = len(load.answers)
        invoke(
            "index",
            world["gallery"],
            "--out",
            world["root"] / "gallery2.index",
            "--data",
            synth,
            "--include-queries",
            "--repo",
            repo,
            "--reload",
            server.http_url,
        )
        switch = time.time() - (repo / "asen_search" / "2").stat().st_mtime
        time.sleep(1.0)
    assert before > 0 and len(load.answers) > before
    assert load.failures == [], load.failures[:3]
    assert switch <= SWITCH_LIMIT_S
    assert server.alive() and server.process.pid == pid
    ready = {(m["name"], m.get("version")) for m in server.index() if m["state"] == "READY"}
    assert ("asen_search", "2") in ready
    print(
        f"gallery version 2 ready {switch:.1f} s after it was written; {len(load.answers)} requests"
    )


def test_reload_against_a_server_without_model_control(world, repo, tmp_path) -> None:
    with start_server(repo, log_file=tmp_path / "t.log", **free_ports()) as plain:
        with pytest.raises(AsenError, match="--model-control explicit") as info:
            reload_models(plain.http_url, repo, {"asen_onnx": [2]}, timeout=5)
    assert "\n" not in str(info.value)


def test_reload_of_nothing_listening(repo) -> None:
    with pytest.raises(AsenError, match="cannot reach the server"):
        reload_models("127.0.0.1:1", repo, {"asen_onnx": [1]}, timeout=2)


def test_cli_reload_mistakes_are_one_line_and_write_nothing(checkpoint, tmp_path) -> None:
    from typer.testing import CliRunner

    from asen.cli import app

    repo = tmp_path / "models"
    result = CliRunner().invoke(
        app, ["export", str(checkpoint), "--repo", str(repo), "--reload", "localhost:http"]
    )
    assert (
        result.exit_code == 1 and "--reload 'localhost:http': expected host:port" in result.output
    )
    assert not repo.exists()
    result = CliRunner().invoke(
        app, ["index", str(tmp_path / "g.npz"), "--out", str(tmp_path / "i"), "--reload", "h:1"]
    )
    assert result.exit_code == 1 and "--reload needs --repo" in result.output
