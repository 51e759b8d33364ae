"""Finding, starting and stopping a real `tritonserver` on a model repository.

The server is the one on PATH (NVIDIA's Triton container), else the one bundled in the
`nvidia-pytriton` wheel (Python backend only; see docs/serving.md, "asen serve"). The
repository is served through a view in a private run folder: each model with the first of
its configs (`config.pbtxt`, then `configs/*.pbtxt`) whose backend this server has, and the
files of its version folders linked in. So `<name>_onnx` runs on the ONNX Runtime backend
where there is one and otherwise as a Python-backend model running ONNX Runtime on the same
`model.onnx`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from asen.client.model_control import ViewSync, control_flags, link_warmup
from asen.export.repository import BACKEND_OF, CONFIG, read_config

import asen
from asen import AsenError
from asen.signals import held_stop_signals

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
HANGUP_STOP_S = 2.0  # after SIGHUP: Triton's own shutdown, then the process group is killed
EXIT_TIMEOUT_S = 10  # tritonserver's own wait for in-flight requests at shutdown
_FAILED = re.compile(r"failed to load '([^']+)' version \d+: (.*?)\"?$")
PR_SET_PDEATHSIG = 1
RUN_PREFIX = "asen-serve-"  # the private run folder of each server `launch` starts
# Kills the server's process group (tritonserver and its Python-backend stubs, which
# outlive a killed tritonserver) when its stdin, a pipe only the launcher holds, closes:
# the launcher exited, however it died.
WATCHDOG = 'cat >/dev/null; kill -KILL -- "-$1"'


@dataclass(frozen=True)
class ServerBinary:
    """A `tritonserver` executable, its backend folder, and whether it is the pytriton one."""

    path: Path
    backends: Path
    bundled: bool

    def backend_names(self) -> set[str]:
        """The backends in its backend folder, and the built-in ensemble scheduler."""
        if not self.backends.is_dir():
            return {"ensemble"}
        return {p.name for p in self.backends.iterdir() if p.is_dir()} | {"ensemble"}


def find_server() -> ServerBinary:
    """tritonserver on PATH (NVIDIA's container), else the one in the nvidia-pytriton wheel."""
    on_path = shutil.which("tritonserver")
    if on_path:
        binary = Path(on_path).resolve()
        return ServerBinary(binary, binary.parent.parent / "backends", bundled=False)
    spec = importlib.util.find_spec("pytriton")
    root = Path(spec.origin).parent / "tritonserver" if spec and spec.origin else None
    if root is None or not (root / "bin" / "tritonserver").is_file():
        raise AsenError(
            "no tritonserver found: run inside NVIDIA's Triton container "
            "(nvcr.io/nvidia/tritonserver) or `pip install nvidia-pytriton`, which bundles one"
        )
    return ServerBinary(root / "bin" / "tritonserver", root / "backends", bundled=True)


def _private_backends(server: ServerBinary, run_dir: Path) -> Path:
    """The bundled Python backend plus the stub for this Python version, in the run folder."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server.path.parent.parent / "python_backend_stubs" / version
    stub = stub / "triton_python_backend_stub"
    if not stub.is_file():
        raise AsenError(
            f"the nvidia-pytriton wheel has no Python backend stub for Python {version}"
        )
    target = run_dir / "backends"
    shutil.copytree(server.backends, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, target / "python" / stub.name)
    return target


def _env(server: ServerBinary) -> dict[str, str]:
    """This venv's Python first on PATH (the stub embeds the interpreter it finds there) and
    asen importable; for the bundled server the libraries its stub and binary need."""
    env = dict(os.environ)

    def prepend(key: str, *paths: str) -> None:
        env[key] = os.pathsep.join([*paths, *filter(None, [env.get(key)])])

    prepend("PATH", str(Path(sys.executable).parent))
    prepend("PYTHONPATH", str(Path(asen.__file__).resolve().parent.parent))
    if server.bundled:
        libs = server.path.parent.parent.parent.parent / "nvidia_pytriton.libs"
        prepend("LD_LIBRARY_PATH", sysconfig.get_config_var("LIBDIR") or "", str(libs))
    return env


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Fail before starting anything when a port is taken (saying so when a Triton server
    answers there, with its pid where /proc shows it)."""
    for flag, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                problem = f"{flag} {port}: cannot listen on {host}:{port} ({e.strerror})"
                raise AsenError(problem + _who_listens(host, port)) from None


def _who_listens(host: str, port: int) -> str:
    """'; ... there: stop it with ...' when a Triton server holds the port, else ''. One
    that `asen serve` started (its model repository is a run folder of ours) is named as
    such, and stopped with its process group: its Python-backend stubs too."""
    pid = listener_pid(port)
    try:
        command = [a.encode() for a in psutil.Process(pid).cmdline()] if pid else []
        pgid = os.getpgid(pid) if pid else 0
    except (psutil.Error, OSError):
        command, pgid = [], 0
    if command and command[0].endswith(b"tritonserver"):
        repository = next((a for a in command if a.startswith(b"--model-repository=")), b"")
        if RUN_PREFIX.encode() in repository and pgid == pid:
            return (
                f"; a tritonserver that `asen serve` started (pid {pid}) still listens there: "
                f"stop it with `kill -- -{pgid}` (it and its Python stubs)"
            )
        return f"; a tritonserver (pid {pid}) listens there: stop it with `kill {pid}`"
    if _answers_triton(host, port):
        return "; a Triton server answers there: stop it or choose other ports"
    return ""


def _answers_triton(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v2/health/live", timeout=1) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on TCP `port` here (psutil; None if unseen, e.g.
    another user's process)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid:
                return conn.pid
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(host: str = "127.0.0.1") -> dict[str, int]:
    """Free HTTP, gRPC and metrics ports, as `launch`/`start_server` keyword arguments."""
    return {name: free_port(host) for name in ("http_port", "grpc_port", "metrics_port")}


@dataclass
class Choice:
    """How one model of the repository is served, or why it is not (`config` None)."""

    model: str
    config: Path | None
    how: str  # e.g. "onnxruntime backend", "ensemble: a -> b", or why it is not served


def _configs(model_dir: Path) -> list[Path]:
    return [model_dir / CONFIG, *sorted((model_dir / "configs").glob("*.pbtxt"))]


def _backend(cfg) -> str:
    return cfg.backend or BACKEND_OF.get(cfg.platform, cfg.platform)


def plan_models(repo: Path, backends: set[str]) -> list[Choice]:
    """Per model, the first config this server can run: its backend exists and, for an
    ensemble, every step's model is served."""
    if not repo.is_dir():
        raise AsenError(f"{repo}: no such model repository (write one with `asen export`)")
    dirs = sorted(p for p in repo.iterdir() if (p / CONFIG).is_file())
    if not dirs:
        raise AsenError(f"{repo}: no model configs in this repository (run `asen export`)")
    options = {d.name: [(p, read_config(p)) for p in _configs(d) if p.is_file()] for d in dirs}
    chosen: dict[str, Choice] = {}

    def pick(name: str) -> Choice:
        first = _backend(options[name][0][1])
        for path, cfg in options[name]:
            if cfg.platform == "ensemble":
                steps = [s.model_name for s in cfg.ensemble_scheduling.step]
                if all(s in chosen and chosen[s].config for s in steps):
                    return Choice(name, path, "ensemble: " + " -> ".join(steps))
            elif _backend(cfg) in backends:
                how = f"{_backend(cfg)} backend"
                if path.parent.name == "configs":
                    runs = "ONNX Runtime inside the " if first == "onnxruntime" else ""
                    how = (
                        f"{runs}{how} ({path.relative_to(repo)}), "
                        f"as this server has no {first} backend"
                    )
                return Choice(name, path, how)
        if first == "ensemble":
            return Choice(name, None, "not served: a model it runs is not served")
        return Choice(name, None, f"not served: this server has no {first} backend")

    for name in sorted(options, key=lambda n: options[n][0][1].platform == "ensemble"):
        chosen[name] = pick(name)
    return [chosen[d.name] for d in dirs]


def has_gpu() -> bool:
    """Whether this machine has an NVIDIA GPU (its device files)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def check_instance_kinds(choices: list[Choice], gpu: bool) -> None:
    """A config that asks for GPU instances on a machine without a GPU is one clear line
    (Triton would fail to load it)."""
    for c in choices:
        config = read_config(c.config) if c.config and not gpu else None
        if config and any(g.kind == g.KIND_GPU for g in config.instance_group):
            raise AsenError(
                f"{c.config}: model {c.model} runs GPU instances, and this machine has no GPU; "
                "re-export with --instance-kind cpu (or serve it on a GPU machine)"
            )


def build_view(repo: Path, choices: list[Choice], view: Path) -> Path:
    """A repository of the served models: the chosen config, the version files linked."""
    for c in choices:
        if c.config is None:
            continue
        target = view / c.model
        target.mkdir(parents=True)
        shutil.copyfile(c.config, target / CONFIG)
        link_warmup(repo / c.model, target)
        for version in (repo / c.model).iterdir():
            if version.is_dir() and version.name.isdigit():
                (target / version.name).mkdir()  # real folder: __pycache__ lands in the view
                for item in version.iterdir():
                    if item.name != "__pycache__":
                        (target / version.name / item.name).symlink_to(item.resolve())
    return view


# The log is read only when tritonserver has exited during start-up: no API answers then,
# and its log is the one place Triton gives the reason (a running server's load failures
# come from its repository index instead).
def _load_failures(log: Path) -> list[str]:
    """Triton's own 'failed to load' messages, one line each."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        m = _FAILED.search(line)
        if m:
            reason = m.group(2).split("\\n\\nAt:")[0]  # a Python traceback: its message
            reason = " ".join(reason.replace("\\n", " ").split())
            out.append(f"model {m.group(1)} failed to load: {reason}")
    return out


def _last_error(log: Path) -> str:
    """Triton's reason for exiting: after its usage text (a bad command line, e.g. one port
    for HTTP and gRPC) the last line, else the last line that mentions an error."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    if any(ln.startswith("Usage: tritonserver") for ln in lines):
        return lines[-1]
    errors = [ln for ln in lines if "rror" in ln]
    return errors[-1] if errors else ""


@dataclass
class ServerHandle:
    """A running tritonserver (its own process group) and what it serves."""

    process: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_file: Path
    run_dir: Path
    binary: ServerBinary
    choices: list[Choice]
    models: list[str] = field(default_factory=list)  # ready models
    versions: dict[str, list[int]] = field(default_factory=dict)  # ready versions per model
    watchdog: subprocess.Popen | None = None  # kills the group if the launcher dies
    command: list[str] = field(default_factory=list)  # how it was started (for a restart)
    env: dict[str, str] = field(default_factory=dict)
    view_sync: ViewSync | None = None  # keeps the view in step (model control explicit, poll)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def alive(self) -> bool:
        return self.process.poll() is None

    def _is_ready(self) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            with short_http_client(self.http_url) as client:
                return client.is_server_ready()
        except (InferenceServerException, OSError):
            return False

    def index(self) -> list[dict]:
        """The repository index: every model with its state (and reason when not ready)."""
        from tritonclient.utils import InferenceServerException

        try:
            with short_http_client(self.http_url) as client:
                return client.get_model_repository_index()
        except (InferenceServerException, OSError):
            return []

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                failures = _load_failures(self.log_file)
                reason = failures[0] if failures else _last_error(self.log_file)
                raise AsenError(
                    f"tritonserver exited (code {self.process.returncode}) while starting: "
                    f"{reason or 'no reason logged'} (log: {self.log_file})"
                )
            if self._is_ready():
                ready = [m for m in self.index() if m.get("state") == "READY"]
                self.models = sorted({m["name"] for m in ready})
                for m in ready:
                    if str(m.get("version", "")).isdigit():
                        self.versions.setdefault(m["name"], []).append(int(m["version"]))
                self.versions = {k: sorted(v) for k, v in self.versions.items()}
                return
            time.sleep(0.2)
        raise AsenError(f"tritonserver not ready after {timeout:.0f} s (log: {self.log_file})")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the server, then SIGKILL its whole process group (the Python stubs too)."""
        pgid = self.process.pid
        if self.view_sync is not None:
            self.view_sync.stop()
        if self.watchdog is not None:  # first, so it never signals a reused group id
            self.watchdog.kill()
            self.watchdog.wait()
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait()
        _wait_group_gone(pgid)
        shutil.rmtree(self.run_dir, ignore_errors=True)


@contextlib.contextmanager
def short_http_client(url: str) -> Iterator[Any]:
    """A short-timeout HTTP client of a server (tritonclient's own), closed after the block.
    It is made with the stop signals held: a stop raised inside its constructor would leave
    a half-made client whose finaliser prints an AttributeError traceback at exit."""
    import tritonclient.http as httpclient

    with held_stop_signals():
        client = httpclient.InferenceServerClient(url, connection_timeout=2.0, network_timeout=2.0)
    try:
        yield client
    finally:
        client.close()


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait until no process of the group is left: SIGKILL is delivered asynchronously, and
    the Python stubs of a server are reaped by init, not by us."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def launch(
    repo: str | Path = "triton_models",
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    log_file: str | Path | None = None,
    timeout: float = READY_TIMEOUT_S,
    model_control: str = "none",
) -> ServerHandle:
    """Start tritonserver on `repo` (`model_control`: none, explicit or poll, see
    client/model_control.py; bound to `host`, its output in
    `log_file`, by default `<repo>/tritonserver.log`) and wait until it and all its models
    are ready. The caller owns the handle: call `stop()`."""
    repo = Path(repo).resolve()
    binary = find_server()
    choices = plan_models(repo, binary.backend_names())
    if not any(c.config for c in choices):
        raise AsenError(f"{repo}: this server can run none of its models")
    check_instance_kinds(choices, has_gpu())
    check_ports(
        host, {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
    )
    log_file = Path(log_file or repo / "tritonserver.log").resolve()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))
    try:
        view = build_view(repo, choices, run_dir / "models")
        backends = _private_backends(binary, run_dir) if binary.bundled else binary.backends
        command = [
            str(binary.path),
            f"--model-repository={view}",
            f"--backend-directory={backends}",
            *control_flags(model_control),
            f"--http-address={host}",
            f"--http-port={http_port}",
            f"--grpc-address={host}",
            f"--grpc-port={grpc_port}",
            f"--metrics-address={host}",
            f"--metrics-port={metrics_port}",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        ]
        env = _env(binary)
        process, watchdog = _spawn(command, log_file, env)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    handle = ServerHandle(
        process, host, http_port, grpc_port, metrics_port, log_file, run_dir, binary, choices
    )
    handle.watchdog, handle.command, handle.env = watchdog, command, env
    try:
        handle.wait_ready(timeout)
        if model_control != "none":
            sync = ViewSync(repo, run_dir / "models", binary.backend_names(), run_dir)
            handle.view_sync = sync.start()
    except BaseException:
        handle.stop()
        raise
    return handle


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the launching thread ends (PR_SET_PDEATHSIG;
    only from the main thread, whose end is the process's), and exits at once if the
    launcher is already gone. libc is loaded here, before the fork."""
    parent = os.getpid()
    libc = ctypes.util.find_library("c")
    prctl = ctypes.CDLL(libc, use_errno=True).prctl if libc else None
    main = threading.current_thread() is threading.main_thread()

    def preexec() -> None:
        if prctl is not None and main:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _spawn(
    command: list[str], log_file: Path, env: dict[str, str], append: bool = False
) -> tuple[subprocess.Popen, subprocess.Popen]:
    """tritonserver in its own process group, dying with this process, and its watchdog
    (its output in `log_file`, after what is there with `append`: a restart)."""
    with open(log_file, "ab" if append else "wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: stopped as one, no stray stubs
            preexec_fn=_die_with_parent(),  # noqa: PLW1509 - prctl only, libc loaded before
        )
    try:
        watchdog = subprocess.Popen(
            ["sh", "-c", WATCHDOG, "asen-serve-watchdog", str(process.pid)],
            stdin=subprocess.PIPE,  # only this process holds the write end
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # no terminal signals: it outlives a closed terminal
        )
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return process, watchdog


@contextlib.contextmanager
def start_server(repo: str | Path, **options) -> Iterator[ServerHandle]:
    """`launch(repo, **options)` for the duration of a with-block; always stopped after."""
    handle = launch(repo, **options)
    try:
        yield handle
    finally:
        handle.stop()


def serve_until_stopped(
    handle: ServerHandle,
    announce: Callable[[], None],
    report: Callable[[str], None] | None = None,
) -> None:
    """Call `announce` (it tells the user how to stop), then block until Ctrl-C, SIGTERM or
    SIGHUP (a closed terminal; then stop the server cleanly). A server that exits on its
    own meanwhile is restarted with backoff, each restart one line through `report`
    (default: stderr) and counted in the status file (client/supervise.py); one that
    cannot be restarted is an error naming its log. A stop that arrives while `announce`
    runs is as clean as one after it."""
    from asen.client.supervise import Supervisor

    supervisor = Supervisor(handle, report) if report else Supervisor(handle)

    received = []

    def terminate(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, terminate)
        supervisor.write_status("ready")
        announce()
        supervisor.run()
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # the terminal is gone: no one waits for in-flight requests, so stop quickly
        handle.stop(HANGUP_STOP_S if signal.SIGHUP in received else STOP_TIMEOUT_S)
        supervisor.write_status("stopped")
