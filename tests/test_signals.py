"""SIGNAL MATRIX: every long-running command under SIGTERM, SIGINT and SIGHUP, sent to its
main process alone and to its whole process group (as `timeout`, Slurm's scancel, systemd
and a shell's job control do), at a moment when the command is mid-work: DataLoader
workers decoding, a staging folder half written, tritonserver starting, the page serving.

Each run must end with the documented exit code (docs/robustness.md, "Signals and exit
codes"), no traceback, none of the processes it had before the signal still running
(psutil), and no temporary folder left (`asen-serve-*`, `asen-perf-*`, `.asen-tmp-*`,
`.export-*`). Then at random moments: training and export signalled at a random time,
`--resume` / a rerun must reach the uninterrupted result; ASEN_SIGNAL_RUNS sets how many
runs each (2 by default; 20 by hand, see docs/robustness.md).

Commands run in children of a forkserver that imported asen once, each in a session of its
own, so that the ~40 runs take a few minutes on 2 cores."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from asen.checkpoint import atomic_save, load_checkpoint, make_checkpoint
from asen.config import AttributeSpec, load_config
from asen.data.synthetic import DEFAULT_ATTRIBUTES, generate
from asen.evaluate import EmbeddedSplit
from asen.model.asen import ASENPP
from tests.client.search_world import serving_search_repo

SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
TARGETS = ["process", "group"]
RANDOM_RUNS = int(os.environ.get("ASEN_SIGNAL_RUNS", "2"))
TINY = [
    *("-c", "small", "--set", "model.image_size=32", "--set", "model.local_size=24"),
    *("--set", "train.batch_size=4", "--set", "train.micro_batch=4"),
    *("--set", "train.eval_batch_size=32"),
]
_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(["asen.cli", "asen.train", "asen.export.build", "asen.client.app"])


def _child(args: list[str], log: str, tmp: str) -> None:
    """`asen ARGS` in a session of its own, its output in `log`, its temporary folders
    (tritonserver's run folder, perf_analyzer's inputs) in `tmp` (a short path: sockets
    of multiprocessing live there too)."""
    multiprocessing.set_start_method("fork", force=True)  # DataLoader workers as in `asen`
    os.setsid()
    tempfile.tempdir = tmp
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from asen.cli import app

    try:
        app(args, prog_name="asen", standalone_mode=True)
    except SystemExit as e:
        sys.exit(e.code)


def _start(args: list, log: Path) -> multiprocessing.Process:
    """`asen ARGS` started; its temporary folder is `_tmp(log)`."""
    _tmp(log).mkdir(exist_ok=True)
    proc = _ctx.Process(target=_child, args=([str(a) for a in args], str(log), str(_tmp(log))))
    proc.start()
    return proc


def _tmp(log: Path) -> Path:
    """The temporary folder of the run logging to `log`: short, under /tmp."""
    digest = hashlib.sha1(str(log).encode()).hexdigest()[:12]
    return Path("/tmp") / f"asen-sig-{digest}"


def _temporaries(*folders: Path) -> set[Path]:
    """asen's temporary folders and files in `folders`."""
    found = set()
    for folder in folders:
        for prefix in ("asen-serve-", "asen-perf-", ".asen-tmp-", ".export-"):
            found |= set(folder.glob(f"{prefix}*"))
    return found


def _wait(check: Callable[[], bool], proc, log: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.is_alive(), f"ended before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"never reached {what}:\n{log.read_text()}"
        time.sleep(0.02)


def _has_child(pid: int, name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return any(name in c.name() for c in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            return False

    return check


def _signal_run(args: list, *, log: Path, mid_work, sig: signal.Signals, target: str, watch=()):
    """Start `asen ARGS`, wait until `mid_work(proc)` says it is mid-work, signal it; returns
    (exit code, output). Checks no traceback, no process and no temporary left."""
    watch = [*watch, _tmp(log)]
    before = _temporaries(*watch)
    proc = _start(args, log)
    try:
        _wait(mid_work(proc), proc, log, "the moment to signal")
        helpers = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, sig) if target == "group" else os.kill(proc.pid, sig)
        proc.join(120)
    finally:
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.join()
    output = log.read_text()
    assert proc.exitcode is not None
    assert "Traceback" not in output, output
    _, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive, f"left running after {sig.name}: {alive}\n{output}"
    assert _temporaries(*watch) <= before, _temporaries(*watch) - before
    shutil.rmtree(_tmp(log))
    return proc.exitcode, output


def _code(sig: signal.Signals) -> int:
    """The exit code of a command that a signal ended before its work was done."""
    return 128 + int(sig)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A synthetic dataset, a tiny checkpoint, its model repository, an embeddings file."""
    root = tmp_path_factory.mktemp("signals")
    generate(root / "data", seed=5, n_train=40, n_eval=10)
    cfg = load_config(["small"], ["model.image_size=32", "model.local_size=24"])
    attributes = [AttributeSpec(n, v) for n, v in DEFAULT_ATTRIBUTES.items()]
    torch.manual_seed(0)
    model = ASENPP(cfg.model, len(attributes), 1)
    atomic_save(make_checkpoint(model, cfg, attributes), root / "model.pt")
    from asen.export.build import export_model

    export_model(root / "model.pt", root / "repo", max_batch=4)
    torch.manual_seed(1)  # another model: an export of it over `repo` changes every file
    model = ASENPP(cfg.model, len(attributes), 1)
    atomic_save(make_checkpoint(model, cfg, attributes), root / "other.pt")
    rng = np.random.default_rng(0)
    n = 200_000  # large enough that indexing is still running when the signal lands
    emb = rng.standard_normal((n, 32)).astype(np.float32)
    EmbeddedSplit(
        embeddings=emb / np.linalg.norm(emb, axis=1, keepdims=True),
        image_ids=np.arange(n),
        attributes=np.arange(n) % 4,
        values=np.arange(n) % 3,
        is_query=np.arange(n) < 100,
        paths=[f"{i}.png" for i in range(n)],
    ).save(root / "gallery.npz", list(DEFAULT_ATTRIBUTES))
    return {
        "root": root,
        "data": root / "data",
        "ckpt": root / "model.pt",
        "other": root / "other.pt",
        "repo": root / "repo",
    }


@pytest.fixture(scope="module")
def search_server(world, tmp_path_factory):
    """A real tritonserver with asen_search, for `asen app`."""
    root = tmp_path_factory.mktemp("search")
    with serving_search_repo(world["repo"], world["data"], root) as served:
        yield served["server"]


# -------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_train(world, tmp_path, sig, target) -> None:
    """Mid-epoch, DataLoader workers running: the partial epoch is saved, exit 0 (130 for
    SIGINT)."""
    run = tmp_path / "run"
    args = ["train", "--data", world["data"], *TINY, "--set", "train.triplets_per_epoch=400"]
    args += ["--workers", 2, "--epochs", 2, "--out", run]

    def mid_work(proc):
        return _has_child(proc.pid, "pt_data_worker")

    code, output = _signal_run(
        args, log=tmp_path / "log", mid_work=mid_work, sig=sig, target=target, watch=[run]
    )
    assert code == (130 if sig == signal.SIGINT else 0), output
    assert f"stopped by {sig.name}" in output
    assert load_checkpoint(run / "last.pt")["records"][-1]["epoch"] == 1
    assert (run / "metrics.jsonl").read_text().strip()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_export(world, tmp_path, sig, target) -> None:
    """While the staging folder is being filled: nothing is switched in, nothing is left."""
    out = tmp_path / "repo"
    out.mkdir()

    def mid_work(proc):
        return lambda: any(out.glob(".export-*"))

    args = ["export", world["ckpt"], "--repo", out, "--max-batch", 4]
    code, output = _signal_run(
        args, log=tmp_path / "log", mid_work=mid_work, sig=sig, target=target, watch=[out]
    )
    assert code == _code(sig), output
    assert not [p for p in out.iterdir() if p.is_dir()], "a model set was half switched in"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_serve_during_start_up(world, tmp_path, sig, target) -> None:
    """tritonserver started, not ready yet: it is stopped, its run folder removed."""
    from asen.client.server import free_ports

    ports = [f"--{k.replace('_', '-')}={v}" for k, v in free_ports().items()]
    args = ["serve", "--repo", world["repo"], "--log-file", tmp_path / "triton.log", *ports]

    def mid_work(proc):
        return _has_child(proc.pid, "tritonserver")

    code, output = _signal_run(
        args, log=tmp_path / "log", mid_work=mid_work, sig=sig, target=target
    )
    assert code == _code(sig), output
    said = "interrupted" if sig == signal.SIGINT else f"stopped by {sig.name}"
    assert output.strip().splitlines()[-1] == said, output


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_app(search_server, tmp_path, sig, target) -> None:
    """The page serving: uvicorn shuts down, exit 0."""
    from asen.client.server import free_port

    port = free_port()
    args = ["app", "--url", search_server.grpc_url, "--port", port]
    log = tmp_path / "log"

    def mid_work(proc):
        return lambda: log.exists() and "asen app on" in log.read_text() and _listens(port)

    code, output = _signal_run(args, log=log, mid_work=mid_work, sig=sig, target=target)
    assert code == 0, output


def _listens(port: int) -> bool:
    return any(c.laddr.port == port and c.status == "LISTEN" for c in psutil.net_connections())


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_index(world, tmp_path, sig, target) -> None:
    """While the index folder is being written: no index, no temporary left."""
    out = tmp_path / "gallery.index"

    def mid_work(proc):
        return lambda: any(tmp_path.glob(".asen-tmp-*"))

    args = ["index", world["root"] / "gallery.npz", "--out", out]
    code, output = _signal_run(
        args, log=tmp_path / "log", mid_work=mid_work, sig=sig, target=target, watch=[tmp_path]
    )
    assert code == _code(sig), output
    assert not out.exists()


@pytest.fixture(scope="module")
def catalog_world(world) -> dict:
    """A synthetic catalog table and its embedded catalog, for catalog embed and load."""
    from asen.backends import open_encoder
    from asen.catalog.embed import embed_catalog
    from asen.catalog.items import read_items
    from asen.catalog.synthetic import write_catalog

    table = write_catalog(world["root"] / "shop", items=3000, image_size=64, distinct_images=64)
    catalog = world["root"] / "catalog"
    encoder = open_encoder("torch", world["ckpt"], device="cpu")
    embed_catalog(encoder, read_items(table, id_column="sku"), catalog,
                  images_root=table.parent, chunk_rows=256)  # fmt: skip
    return {"table": table, "catalog": catalog}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_catalog_embed(world, catalog_world, tmp_path, sig, target) -> None:
    """DataLoader workers decoding, a chunk being written: no manifest, no temporary;
    `--resume` then finishes the catalog."""
    out = tmp_path / "catalog"
    table = catalog_world["table"]
    args = ["catalog", "embed", table, "--images", table.parent, "--model", world["ckpt"]]
    args += ["--out", out, "--id-column", "sku", "--backend", "torch", "--device", "cpu"]
    args += ["--chunk-rows", 256, "--workers", 2]

    def mid_work(proc):
        workers = _has_child(proc.pid, "pt_data_worker")
        return lambda: workers() and any(out.rglob("*.parquet"))

    code, output = _signal_run(
        args, log=tmp_path / "log", mid_work=mid_work, sig=sig, target=target, watch=[out]
    )
    assert code == _code(sig), output
    assert not (out / "manifest.json").exists()
    if sig == signal.SIGTERM and target == "group":  # once: the stopped run resumes
        proc = _start([*args, "--resume"], tmp_path / "resume.log")
        proc.join(300)
        assert proc.exitcode == 0, (tmp_path / "resume.log").read_text()
        assert _catalog_rows(out) == _catalog_rows(catalog_world["catalog"])


def _catalog_rows(folder: Path) -> list:
    """The ids and embeddings of a catalog folder, in order."""
    from asen.catalog.files import open_catalog

    return open_catalog(folder).read().to_pylist()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_catalog_load(catalog_world, tmp_path, sig, target) -> None:
    """Batches going into a Milvus Lite file: the command stops; a rerun (an upsert) loads
    every item."""
    store = tmp_path / "shop.db"
    args = ["catalog", "load", catalog_world["catalog"], "--store", store, "--index", "flat"]
    args += ["--batch-size", 16]
    log = tmp_path / "log"

    def mid_work(proc):  # rows arriving: the collection is made (its log holds rows)
        return lambda: any(store.rglob("wal_*.arrow"))

    code, output = _signal_run(args, log=log, mid_work=mid_work, sig=sig, target=target)
    assert code == _code(sig), output
    if sig == signal.SIGTERM and target == "group":  # once: a rerun loads every item
        proc = _start(args, tmp_path / "again.log")
        proc.join(300)
        assert proc.exitcode == 0, (tmp_path / "again.log").read_text()
        assert "it holds 3000" in (tmp_path / "again.log").read_text()


def _perf_analyzer_or_skip() -> None:
    from asen.client.perf import find_perf_analyzer

    from asen import AsenError

    try:
        find_perf_analyzer()
    except AsenError:
        pytest.skip("perf_analyzer is not installed (scripts/install_perf_analyzer.sh)")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_bench_serve(search_server, tmp_path, sig, target) -> None:
    """perf_analyzer loading the server: it is stopped with the command, and its input
    folder (`asen-perf-*`) removed."""
    _perf_analyzer_or_skip()
    args = ["bench", "serve", "--url", search_server.grpc_url, "--model", "asen_onnx"]
    args += ["--concurrency", "1:4:1", "--measurement-interval", 5000]

    def mid_work(proc):
        return _has_child(proc.pid, "perf_analyzer")

    code, output = _signal_run(
        args, log=tmp_path / "log", mid_work=mid_work, sig=sig, target=target
    )
    assert code == _code(sig), output


# ---------------------------------------------------------------------- random moments


def test_training_signalled_at_random_moments_resumes_to_the_same_run(world, tmp_path) -> None:
    """ASEN_SIGNAL_RUNS times: a random signal to the group at a random moment of a 2-epoch
    run, then --resume (a fresh run when nothing was saved) until it completes; the end
    matches an uninterrupted run (position, weights, last validation)."""
    args = ["train", "--data", world["data"], *TINY, "--set", "train.triplets_per_epoch=40"]
    args += ["--workers", 2, "--epochs", 2]
    reference = tmp_path / "reference"
    started = time.monotonic()
    proc = _start([*args, "--out", reference], tmp_path / "reference.log")
    proc.join(300)
    assert proc.exitcode == 0, (tmp_path / "reference.log").read_text()
    span = time.monotonic() - started
    shutil.rmtree(_tmp(tmp_path / "reference.log"))
    rng = random.Random(0)
    for i in range(RANDOM_RUNS):
        run, log = tmp_path / f"run{i}", tmp_path / f"run{i}.log"
        proc = _start([*args, "--out", run], log)
        time.sleep(rng.uniform(0, span))
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):  # it may end meanwhile
                os.killpg(proc.pid, rng.choice(SIGNALS))
        proc.join(300)
        assert "Traceback" not in log.read_text(), log.read_text()
        for _ in range(3):  # resume until complete
            resume = ["--resume"] if (run / "last.pt").exists() else []
            proc = _start([*args, "--out", run, *resume], log)
            proc.join(300)
            assert proc.exitcode == 0, log.read_text()
            if load_checkpoint(run / "last.pt")["epoch"] == 2:
                break
        shutil.rmtree(_tmp(log))
        a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(run / "last.pt")
        assert (b["epoch"], b["step"]) == (a["epoch"], a["step"])
        for key, value in a["model"].items():
            torch.testing.assert_close(b["model"][key], value, msg=f"run {i}: {key}")


def test_export_signalled_at_random_moments_reaches_the_same_repository(world, tmp_path) -> None:
    """ASEN_SIGNAL_RUNS times: export over an existing repository, a random signal to the
    group at a random moment; the repository is the old set or the new one, never a mix,
    and a rerun gives the uninterrupted result (the same model files)."""
    from asen.atomic import file_sha256

    def digest(repo: Path) -> dict[str, str]:
        return {
            str(p.relative_to(repo)): file_sha256(p)
            for p in sorted(repo.rglob("*"))
            if p.is_file() and p.suffix in (".onnx", ".pbtxt")
        }

    reference = tmp_path / "reference"
    args = ["export", world["other"], "--max-batch", 4]
    started = time.monotonic()
    proc = _start([*args, "--repo", reference], tmp_path / "reference.log")
    proc.join(600)
    assert proc.exitcode == 0, (tmp_path / "reference.log").read_text()
    span, expected = time.monotonic() - started, digest(reference)
    shutil.rmtree(_tmp(tmp_path / "reference.log"))
    old = digest(world["repo"])
    assert old != expected
    rng = random.Random(1)
    for i in range(RANDOM_RUNS):
        repo, log = tmp_path / f"repo{i}", tmp_path / f"repo{i}.log"
        shutil.copytree(world["repo"], repo)
        proc = _start([*args, "--repo", repo], log)
        time.sleep(rng.uniform(0, span))
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):  # it may end meanwhile
                os.killpg(proc.pid, rng.choice(SIGNALS))
        proc.join(300)
        assert "Traceback" not in log.read_text(), log.read_text()
        assert digest(repo) in (old, expected), f"run {i}: a mix of two model sets"
        proc = _start([*args, "--repo", repo], log)
        proc.join(600)
        assert proc.exitcode == 0, log.read_text()
        assert digest(repo) == expected
        shutil.rmtree(_tmp(log))
