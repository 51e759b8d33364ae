"""Model control: new model versions and galleries served without a restart.

`asen serve --model-control none|explicit|poll` maps onto Triton's model control modes:

- `none`: every model is loaded at start; the repository is read once (a new version needs a
  restart).
- `explicit`: every model is loaded at start, and a client loads what changed through
  Triton's repository API (`load_model`); `asen export --reload URL` and `asen index --repo
  ... --reload URL` do so (`reload_models`).
- `poll`: Triton rescans the repository every `POLL_SECS` and loads what changed.

Triton serves a view of the repository (client/server.py, `build_view`: the chosen config
of each model, its version files linked in), so with `explicit` and `poll` a `ViewSync`
thread keeps the view in step with the repository: a new model or version folder is built
beside the view and renamed into it in one step, a changed config replaced in one step.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from asen.export.repository import CONFIG, read_config
from asen.export.warmup import WARMUP_DIR
from tritonclient.utils import InferenceServerException

from asen import AsenError

MODES = ("none", "explicit", "poll")
POLL_SECS = 2  # Triton's --repository-poll-secs in poll mode
SYNC_INTERVAL_S = 0.25  # how often the view is compared with the repository
RELOAD_TIMEOUT_S = 60.0
SMALL_FILE = 1 << 20  # compared by content
SETTLE_S = 4 * SYNC_INTERVAL_S  # before a load request: the view has taken up new files
Report = Callable[[str], None]


def control_flags(mode: str) -> list[str]:
    """tritonserver's options for model control `mode` (all models loaded at start)."""
    if mode not in MODES:
        raise AsenError(f"--model-control {mode!r}: expected one of {', '.join(MODES)}")
    flags = [f"--model-control-mode={mode}"]
    if mode == "explicit":
        flags.append("--load-model=*")
    if mode == "poll":
        flags.append(f"--repository-poll-secs={POLL_SECS}")
    return flags


def _fingerprint(path: Path) -> tuple:
    """What changes when a file of the repository is replaced or edited: a small file's
    content (an export rewrites configs and Python models unchanged: no reload), else its
    inode, time and size (a carried version's files are hard links: unchanged)."""
    try:
        st = path.stat()
        if st.st_size <= SMALL_FILE:
            return (hashlib.sha256(path.read_bytes()).hexdigest(),)
    except OSError:
        return ()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _version_state(folder: Path) -> tuple:
    """The files of one version folder, by name and fingerprint (the view links them)."""
    return tuple(
        (p.relative_to(folder).as_posix(), _fingerprint(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    )


def link_version(source: Path, target: Path) -> None:
    """`target`, a real folder whose top-level items link to those of version `source`
    (real, so a Python model's __pycache__ lands in the view, not the repository)."""
    target.mkdir()
    for item in source.iterdir():
        if item.name != "__pycache__":
            (target / item.name).symlink_to(item.resolve())


def link_warmup(source: Path, target: Path) -> None:
    """Link model folder `source`'s warmup data (export.warmup) into its view `target`."""
    if (source / WARMUP_DIR).is_dir():
        (target / WARMUP_DIR).symlink_to((source / WARMUP_DIR).resolve())


class ViewSync:
    """Keeps the served view of `repo` in step with it, in a thread, until `stop`."""

    def __init__(self, repo: Path, view: Path, backends: set[str], scratch: Path):
        self.repo, self.view, self.backends = repo, view, backends
        self.scratch = scratch  # on the view's file system: renames are atomic
        self.state: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asen-view-sync", daemon=True)
        self.errors: list[str] = []

    def start(self) -> ViewSync:
        """Record the repository as the view shows it now, then follow it in a thread."""
        from asen.client.server import plan_models  # the server module imports this one

        for choice in plan_models(self.repo, self.backends):
            if choice.config is not None and (self.view / choice.model).is_dir():
                self.state[choice.model] = self._wanted(choice.model, choice.config)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SYNC_INTERVAL_S):
            try:
                self.sync()
            except (AsenError, OSError) as e:  # a repository mid-write: next round
                self.errors.append(str(e))

    def sync(self) -> list[str]:
        """Bring every served model of the view up to the repository; the models changed."""
        from asen.client.server import plan_models  # the server module imports this one

        changed = []
        for choice in plan_models(self.repo, self.backends):
            if choice.config is not None and self._sync_model(choice.model, choice.config):
                changed.append(choice.model)
        return changed

    def _wanted(self, model: str, config: Path) -> dict:
        versions = {
            p.name: _version_state(p)
            for p in (self.repo / model).iterdir()
            if p.is_dir() and p.name.isdigit()
        }
        return {"config": config.read_bytes(), "versions": versions}

    def _sync_model(self, model: str, config: Path) -> bool:
        wanted = self._wanted(model, config)
        have = self.state.get(model)
        if have == wanted:
            return False
        target = self.view / model
        if not target.is_dir():
            self._add_model(model, wanted)
        else:
            self._update_model(target, model, wanted, have or {"config": b"", "versions": {}})
        self.state[model] = wanted
        return True

    def _add_model(self, model: str, wanted: dict) -> None:
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            staged = Path(tmp) / model
            staged.mkdir()
            (staged / CONFIG).write_bytes(wanted["config"])
            link_warmup(self.repo / model, staged)
            for version in wanted["versions"]:
                link_version(self.repo / model / version, staged / version)
            os.rename(staged, self.view / model)

    def _update_model(self, target: Path, model: str, wanted: dict, have: dict) -> None:
        for version in sorted(set(have["versions"]) - set(wanted["versions"])):
            self._retire(target / version)
        for version, files in wanted["versions"].items():
            if have["versions"].get(version) == files and (target / version).is_dir():
                continue
            with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
                staged = Path(tmp) / version
                link_version(self.repo / model / version, staged)
                if (target / version).exists():
                    self._retire(target / version)
                os.rename(staged, target / version)
        if not (target / WARMUP_DIR).exists():
            link_warmup(self.repo / model, target)
        if have["config"] != wanted["config"]:
            with tempfile.NamedTemporaryFile(dir=target, delete=False, suffix=".tmp") as f:
                f.write(wanted["config"])
            os.replace(f.name, target / CONFIG)

    def _retire(self, folder: Path) -> None:
        """Move a version folder out of the view in one step, then delete it."""
        gone = Path(tempfile.mkdtemp(dir=self.scratch)) / folder.name
        os.rename(folder, gone)
        shutil.rmtree(gone.parent, ignore_errors=True)


def check_reload_url(url: str) -> tuple[str, str]:
    """(protocol, host:port) of `--reload URL`: `grpc://host:port`, or `http://host:port`
    or `host:port` (HTTP); anything else is one error line, before anything is written."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    except ValueError:
        scheme = host = port = None
    if scheme not in ("http", "grpc") or not host or not port:
        raise AsenError(f"--reload {url!r}: expected host:port, http://host:port or grpc://...")
    return scheme, f"{host}:{port}"


def _client(url: str):
    """A tritonclient for `url` (`check_reload_url`)."""
    protocol, address = check_reload_url(url)
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(address)
    return httpclient.InferenceServerClient(address, connection_timeout=10, network_timeout=120)


def load_order(repo: Path, models: list[str]) -> list[str]:
    """`models`, those whose config is an ensemble last (its steps must be loaded first)."""

    def is_ensemble(model: str) -> bool:
        config = repo / model / CONFIG
        return config.is_file() and read_config(config).platform == "ensemble"

    return sorted(set(models), key=lambda m: (is_ensemble(m), m))


def reload_models(
    url: str,
    repo: Path,
    expect: dict[str, list[int]],
    *,
    timeout: float = RELOAD_TIMEOUT_S,
    report: Report = lambda line: None,
) -> None:
    """Ask the Triton server at `url` to load models `expect` (model -> the versions that
    must be ready after) from `repo`, and wait until they are. A model whose versions are
    all ready already is left alone (Triton's load request reloads a loaded model whole).
    The first request waits `SETTLE_S`, for an `asen serve` view to take up the new files;
    a load that still misses a version is repeated until `timeout`."""
    client = _client(url)
    try:
        pending = [m for m in load_order(repo, list(expect)) if not _ready(client, m, expect[m])]
        if pending:
            time.sleep(SETTLE_S)
        for model in pending:
            _load_until_ready(client, model, expect[model], url, time.monotonic() + timeout)
            ready = ", ".join(map(str, expect[model])) or "latest"
            report(f"{url}: loaded {model} (version {ready} ready)")
    except OSError as e:
        raise AsenError(f"--reload {url}: cannot reach the server ({e})") from None
    finally:
        client.close()


def _ready(client, model: str, versions: list[int]) -> bool:
    """Whether every one of `versions` of `model` is ready (False for no versions)."""
    try:
        return bool(versions) and all(client.is_model_ready(model, str(v)) for v in versions)
    except InferenceServerException:
        return False


def _load_until_ready(client, model: str, versions: list[int], url: str, deadline: float):
    while True:
        try:
            client.load_model(model)
        except InferenceServerException as e:
            raise AsenError(_load_error(url, model, e)) from None
        if not versions or _ready(client, model, versions):
            return
        if time.monotonic() > deadline:
            raise AsenError(
                f"--reload {url}: {model} version {versions} not ready in time; is the server "
                "serving this repository?"
            )
        time.sleep(SETTLE_S)


def _load_error(url: str, model: str, error: InferenceServerException) -> str:
    message = " ".join(str(error.message() or error).split())
    if "not allowed" in message or "polling is enabled" in message:
        return (
            f"--reload {url}: the server does not take load requests ({message}); serve with "
            "`asen serve --model-control explicit`"
        )
    return f"--reload {url}: Triton could not load {model}: {message}"


def written_versions(repo: Path, written: list[Path]) -> dict[str, list[int]]:
    """Model -> the version folders among the files an export or index wrote in `repo`
    (a model with only its config written: no version to wait for)."""
    expect: dict[str, set[int]] = {}
    for path in written:
        parts = Path(path).resolve().relative_to(Path(repo).resolve()).parts
        versions = expect.setdefault(parts[0], set())
        if len(parts) > 2 and parts[1].isdigit():
            versions.add(int(parts[1]))
    return {model: sorted(versions) for model, versions in expect.items()}
