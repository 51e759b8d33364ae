"""What a GPU machine can run without TensorRT, each check its own row of one JSON summary.

Rows (status ok, skipped or failed, a reason, and figures):

- train_cuda_fp32, train_cuda_bf16: a few optimizer steps of a `small` stage-2 model on
  one synthetic batch, on CUDA in fp32 and under bf16 autocast, against the same steps on
  the CPU in the same run (same weights, same batch): step seconds, the losses of every
  step, and the first step's loss difference (same weights, same input) to the CPU's and,
  for bf16, to CUDA fp32;
- ort_cuda_fp32, ort_cuda_fp16: the exported fp32 and fp16 ONNX graphs on ONNX Runtime's
  CUDA execution provider: the synthetic test split's mAP beside the CPU's on the same
  graph, and images/s at a full batch. `onnxruntime-gpu` (with the nvidia-* CUDA 12 wheels
  its `cuda,cudnn` extras pull) is installed from PyPI into a virtual environment of its
  own (ASEN_GPU_VENV, default ~/.cache/asen/gpu-check-venv), pinned to asen's numpy and
  protobuf, and runs in a worker process (benchmarks/workers/ort_cuda.py);
- served_gpu_instances: the fp32 encoder exported with `--instance-kind gpu`, served by
  `asen.client.server`. The bundled tritonserver has only the Python backend, whose asen
  model runs ONNX Runtime, so its GPU instances need the same `onnxruntime-gpu`: the server
  sees that environment first on PYTHONPATH and its CUDA libraries on LD_LIBRARY_PATH;
- trt_fp32, trt_fp16, trt_int8: TensorRT engines through `asen export --trt`, where
  TensorRT and a GPU are there (skipped with the reason otherwise: TensorRT's pip packages
  download from NVIDIA's own index, which these machines do not reach).

A missing GPU or package skips a row with its reason; an error fails that row alone. Exit
status 1 when a row failed.

    python -m benchmarks.gpu_check [--steps 5] [--figures PATH]
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asen import AsenError
from asen.config import load_config
from asen.data.splits import open_dataset
from asen.data.synthetic import generate
from asen.encoders import Encoder
from asen.evaluate import evaluate
from asen.model.asen import ASENPP
from asen.training.setup import param_groups
from asen.training.step import MicroBatches, StepSetup, train_step
from benchmarks import harness
from benchmarks.models import random_checkpoint
from benchmarks.workers.ort_cuda import read_array, write_array

WORKER = Path(__file__).parent / "workers" / "ort_cuda.py"
TRIPLETS, ATTRIBUTES = 16, 8
MAX_FIRST_LOSS_DIFF = {"fp32": 1e-2, "bf16": 5e-2}  # relative; TF32 convolutions, bf16
MAX_MAP_DELTA = {"fp32": 0.001, "fp16": 0.005}  # CUDA against CPU, same graph
PIP_TIMEOUT_S = 300


class Skip(Exception):
    """A row that cannot run here; the message says what is missing."""


def run_row(name: str, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One row: ok with the figures `check()` returns, skipped (Skip: its reason), or failed
    (any other error: its last line; the traceback goes to stderr)."""
    row: dict[str, Any] = {"name": name, "status": "ok", "reason": "", "figures": {}}
    try:
        row["figures"] = check()
        row["reason"] = row["figures"].pop("failed", "")
        row["status"] = "failed" if row["reason"] else "ok"
    except Skip as skip:
        row.update(status="skipped", reason=str(skip))
    except Exception as error:  # noqa: BLE001 - one failed check must not stop the others
        traceback.print_exc(file=sys.stderr)
        text = str(error).strip().splitlines()
        row.update(status="failed", reason=f"{type(error).__name__}: {text[-1] if text else ''}")
    print(f"{name}: {row['status']} {row['reason']}".rstrip(), file=sys.stderr)
    return row


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise Skip(f"no CUDA GPU visible to PyTorch {torch.__version__}")


# ------------------------------------------------------------------------------ training


def _train_losses(device: str, precision: str, steps: int) -> tuple[list[float], float]:
    """The loss of each of `steps` steps from seed-0 weights on one seeded batch, and the
    median step seconds (from the second step on: the first pays for start-up)."""
    cfg = load_config(["stage2", "small"], [f"train.batch_size={TRIPLETS}"])
    torch.manual_seed(0)
    model = ASENPP(cfg.model, ATTRIBUTES, 2).to(device).train()
    optimizer = torch.optim.Adam(param_groups(model, cfg))
    setup = StepSetup(MicroBatches(model, 0), optimizer, cfg.train, torch.device(device), precision)
    generator = torch.Generator().manual_seed(0)
    side = cfg.model.source_size
    images = torch.randint(
        0, 256, (TRIPLETS, 3, 3, side, side), dtype=torch.uint8, generator=generator
    )
    attributes = torch.randint(0, ATTRIBUTES, (TRIPLETS,), generator=generator)
    losses, seconds = [], []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(train_step(setup, images, attributes)["loss"])  # .item() synchronizes
        seconds.append(time.perf_counter() - start)
    return losses, harness.median(seconds[1:] or seconds)


def train_rows(steps: int) -> list[dict[str, Any]]:
    """train_cuda_fp32 and train_cuda_bf16, each against the CPU's steps (run once)."""
    runs: dict[str, tuple[list[float], float]] = {}

    def losses(device: str, precision: str) -> tuple[list[float], float]:
        if (device, precision) not in runs:
            runs[device, precision] = _train_losses(device, precision, steps)
        return runs[device, precision]

    def check(precision: str) -> dict[str, Any]:
        require_cuda()
        cuda, cuda_s = losses("cuda", precision)
        cpu, cpu_s = losses("cpu", "fp32")
        figures = {
            "gpu": torch.cuda.get_device_name(0),
            "steps": steps,
            "triplets_per_step": TRIPLETS,
            "step_s_cuda": round(cuda_s, 4),
            "step_s_cpu": round(cpu_s, 4),
            "speedup_vs_cpu": round(cpu_s / cuda_s, 2),
            "losses_cuda": [round(v, 6) for v in cuda],
            "losses_cpu": [round(v, 6) for v in cpu],
            "first_loss_rel_diff_vs_cpu": abs(cuda[0] - cpu[0]) / max(abs(cpu[0]), 1e-12),
        }
        if precision == "bf16":
            fp32 = losses("cuda", "fp32")[0]
            figures["first_loss_rel_diff_vs_cuda_fp32"] = abs(cuda[0] - fp32[0]) / max(
                abs(fp32[0]), 1e-12
            )
        worst = max(v for k, v in figures.items() if k.startswith("first_loss_rel_diff"))
        if not all(np.isfinite(cuda)):
            figures["failed"] = "a CUDA loss is not finite"
        elif worst > MAX_FIRST_LOSS_DIFF[precision]:
            figures["failed"] = (
                f"first-step loss differs by {worst:.2e} (relative) > "
                f"{MAX_FIRST_LOSS_DIFF[precision]:.0e}"
            )
        return figures

    return [run_row(f"train_cuda_{p}", lambda p=p: check(p)) for p in ("fp32", "bf16")]


# ------------------------------------------------------------- ONNX Runtime's CUDA provider


def _installed_pins() -> list[str]:
    """asen's numpy and protobuf, so that the separate environment holds the same ones (the
    served check puts it before asen's on the server's PYTHONPATH)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("numpy", "protobuf")]


def _has_cuda_provider(python: Path) -> bool:
    probe = "import onnxruntime as o; print('CUDAExecutionProvider' in o.get_available_providers())"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return found.stdout.strip() == "True"


def gpu_venv() -> Path:
    """The Python of the environment holding `onnxruntime-gpu[cuda,cudnn]`, made or reused
    (ASEN_GPU_VENV); Skip with pip's last line when it cannot be installed."""
    default = Path.home() / ".cache" / "asen" / "gpu-check-venv"
    folder = Path(os.environ.get("ASEN_GPU_VENV") or default)
    python = folder / "bin" / "python"
    if python.is_file() and _has_cuda_provider(python):
        return python
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--clear", str(folder)], capture_output=True, text=True
    )
    if made.returncode != 0:
        lines = made.stderr.strip().splitlines() or ["(no output)"]
        raise Skip(f"cannot make the virtual environment {folder}: {lines[-1]}")
    package = "onnxruntime-gpu[cuda,cudnn]"
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    command += ["--retries", "1", "--timeout", "15", package, *_installed_pins()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Skip(f"pip install {package} took over {PIP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise Skip(f"pip install {package} from PyPI failed: {lines[-1].strip()}")
    if not _has_cuda_provider(python):
        raise Skip(f"{package} installed in {folder}, but offers no CUDAExecutionProvider")
    return python


class CudaOrtEncoder(Encoder):
    """An ONNX graph on ONNX Runtime's CUDA provider, in a worker process under `python`
    (benchmarks/workers/ort_cuda.py); `info` and `batch_size` as the CPU encoder's."""

    backend = "onnx_cuda"

    def __init__(self, python: Path, path: Path, *, reference: Encoder):
        self.path, self.info, self.batch_size = path, reference.info, reference.batch_size
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
        self.process = subprocess.Popen([str(python), str(WORKER), str(path)], **pipes)
        hello = self.process.stdout.readline()
        if not hello:
            self.process.wait(timeout=30)
            raise RuntimeError(f"the ONNX Runtime CUDA worker exited ({self.process.returncode})")
        self.hello = json.loads(hello)

    @classmethod
    def open(cls, model: str, **options: Any) -> Encoder:
        raise NotImplementedError("made by gpu_check with a worker environment")

    def _send(self, request: dict, images: np.ndarray, attributes: np.ndarray) -> None:
        stream = self.process.stdin
        stream.write(json.dumps(request).encode() + b"\n")
        write_array(stream, np.ascontiguousarray(images))
        write_array(stream, np.ascontiguousarray(attributes, dtype=np.int64))
        stream.flush()

    def encode_batch(self, images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        self._send({"op": "encode"}, images, attributes)
        return read_array(self.process.stdout)

    def seconds(self, images: np.ndarray, attributes: np.ndarray, rounds: int) -> list[float]:
        """Seconds of each of `rounds` runs of one batch, timed in the worker."""
        self._send({"op": "time", "rounds": rounds}, images, attributes)
        return json.loads(self.process.stdout.readline())["seconds"]

    def describe(self) -> str:
        return f"ONNX Runtime {self.hello['onnxruntime']} on {self.hello['providers'][0]}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


def timing_batch(encoder: Encoder) -> tuple[np.ndarray, np.ndarray]:
    """A full batch of seeded random images and attribute ids."""
    rng = np.random.default_rng(0)
    side, n = encoder.info.source_size, encoder.batch_size
    images = rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8)
    return images, rng.integers(0, len(encoder.info.attributes), n).astype(np.int64)


class World:
    """What the checks share, each made on first use (so a machine without a GPU makes
    none): a synthetic dataset, a random `small` checkpoint, its fp32 and fp16 ONNX export,
    and the onnxruntime-gpu environment (or the reason it cannot be had)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._made: dict[str, Any] = {}

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._made:
            try:
                self._made[key] = make()
            except Skip as skip:
                self._made[key] = skip
        if isinstance(self._made[key], Skip):
            raise Skip(str(self._made[key]))
        return self._made[key]

    def data(self) -> Path:
        side = load_config(["small"]).model.source_size
        root = self.folder / "data"
        return self._once("data", lambda: generate(root, 0, 60, 200, image_size=side) and root)

    def checkpoint(self) -> Path:
        return self._once("ckpt", lambda: random_checkpoint("small", self.folder / "small.pt"))

    def repo(self, instance_kind: str | None = None) -> Path:
        """The export of every checked precision, its encoders on `instance_kind`."""
        from asen.export.build import export_model
        from asen.export.deployment import DeploymentOptions

        repo = self.folder / f"repo_{instance_kind or 'default'}"

        def make() -> Path:
            options = DeploymentOptions(instance_kind=instance_kind)
            export_model(self.checkpoint(), repo, precisions=("fp32", "fp16"), deployment=options)
            return repo

        return self._once(f"repo_{instance_kind}", make)

    def gpu_python(self) -> Path:
        return self._once("gpu_python", gpu_venv)


def ort_figures(world: World, precision: str) -> dict[str, Any]:
    """mAP on CUDA and on the CPU for one exported graph, and images/s of each."""
    from asen.export.encoders import OnnxEncoder
    from asen.export.layout import find_artifact

    require_cuda()
    python = world.gpu_python()
    model = "asen_onnx" if precision == "fp32" else f"asen_onnx_{precision}"
    path = find_artifact(world.repo() / model, "onnx")
    dataset = open_dataset(world.data())
    cpu = OnnxEncoder(path, "cpu")
    with CudaOrtEncoder(python, path, reference=cpu) as cuda:
        cuda_map = evaluate(cuda, dataset).overall_map
        images, attributes = timing_batch(cpu)
        cuda_s = harness.median(cuda.seconds(images, attributes, rounds=30))
        provider = cuda.describe()
    cpu_map = evaluate(cpu, dataset).overall_map
    cpu_s = harness.median(
        harness.interleaved({"cpu": lambda: cpu.encode_batch(images, attributes)}, 5)["cpu"]
    )
    figures = {
        "provider": provider,
        "map_cuda": round(cuda_map, 5),
        "map_cpu": round(cpu_map, 5),
        "map_delta": round(cuda_map - cpu_map, 5),
        "batch": len(images),
        "images_per_s_cuda": round(len(images) / cuda_s, 1),
        "images_per_s_cpu": round(len(images) / cpu_s, 1),
    }
    if abs(cuda_map - cpu_map) > MAX_MAP_DELTA[precision]:
        figures["failed"] = f"|mAP(CUDA) - mAP(CPU)| > {MAX_MAP_DELTA[precision]}"
    return figures


@contextlib.contextmanager
def gpu_python_path(python: Path) -> Iterator[None]:
    """The onnxruntime-gpu environment first on PYTHONPATH and its nvidia-* CUDA libraries
    on LD_LIBRARY_PATH, for the processes started meanwhile (the server's stubs)."""
    probe = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    packages = Path(site.stdout.strip())
    libraries = [str(p) for p in sorted(packages.glob("nvidia/*/lib")) if p.is_dir()]
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    for key, paths in (("PYTHONPATH", [str(packages)]), ("LD_LIBRARY_PATH", libraries)):
        os.environ[key] = os.pathsep.join([*paths, *filter(None, [saved[key]])])
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def served_figures(world: World) -> dict[str, Any]:
    """The fp32 encoder served with GPU instances: the kind the server reports, the mAP
    through it and the images/s of full batches."""
    import tritonclient.grpc as grpcclient
    from asen.client.server import find_server, free_ports, start_server
    from asen.client.triton import TritonEncoder

    require_cuda()
    server = find_server()
    only_python = (
        " (the bundled tritonserver has only the Python backend)" if server.bundled else ""
    )
    try:
        python = world.gpu_python()
    except Skip as skip:
        raise Skip(
            f"GPU instances run ONNX Runtime in the Python backend{only_python}: {skip}"
        ) from None
    repo, dataset = world.repo("gpu"), open_dataset(world.data())
    with (
        gpu_python_path(python),
        start_server(repo, log_file=world.folder / "gpu_server.log", **free_ports()) as handle,
    ):
        served = grpcclient.InferenceServerClient(handle.grpc_url).get_model_config("asen_onnx")
        kinds = {group.kind for group in served.config.instance_group}
        with TritonEncoder(handle.grpc_url, "asen_onnx") as encoder:
            served_map = evaluate(encoder, dataset).overall_map
            images, attributes = timing_batch(encoder)
            times = harness.interleaved({"gpu": lambda: encoder.encode(images, attributes)}, 10)
    figures = {
        "server": str(server.path),
        "instance_kinds": sorted(served.config.instance_group[0].Kind.Name(k) for k in kinds),
        "map": round(served_map, 5),
        "batch": len(images),
        "images_per_s": round(len(images) / harness.median(times["gpu"]), 1),
    }
    if figures["instance_kinds"] != ["KIND_GPU"]:
        figures["failed"] = f"served instance kinds {figures['instance_kinds']}, not KIND_GPU"
    return figures


def trt_figures(world: World, precision: str) -> dict[str, Any]:
    """One TensorRT engine through `asen export --trt`: its parity and the mAP against the
    CPU ONNX graph's."""
    from asen.export.build import export_model
    from asen.export.calibrate import CalibrationSource
    from asen.export.encoders import OnnxEncoder, TrtEncoder
    from asen.export.layout import find_artifact, read_sidecar
    from asen.export.tensorrt import require_tensorrt

    try:
        require_tensorrt()
    except AsenError as error:
        raise Skip(str(error)) from None
    repo = world.folder / f"trt_{precision}"
    calibrate = CalibrationSource(world.data(), images=256) if precision == "int8" else None
    export_model(world.checkpoint(), repo, precisions=(precision,), trt=True, calibrate=calibrate)
    suffix = "" if precision == "fp32" else f"_{precision}"
    plan = find_artifact(repo / f"asen_trt{suffix}", "trt")
    dataset, sidecar = open_dataset(world.data()), read_sidecar(plan)
    trt_map = evaluate(TrtEncoder(plan), dataset).overall_map
    onnx_map = evaluate(OnnxEncoder(find_artifact(repo / "asen_onnx", "onnx"), "cpu"), dataset)
    return {
        "tensorrt": sidecar.get("tensorrt_version"),
        "parity_min_cosine": float(sidecar.get("parity_min_cosine", "nan")),
        "map": round(trt_map, 5),
        "map_delta_vs_onnx_cpu": round(trt_map - onnx_map.overall_map, 5),
    }


# ------------------------------------------------------------------------------------ main


def check_all(folder: Path, steps: int) -> dict[str, Any]:
    """Every row, in order, with the machine they ran on and the seconds the run took."""
    start = time.perf_counter()
    world = World(folder)
    rows = train_rows(steps)
    rows += [run_row(f"ort_cuda_{p}", lambda p=p: ort_figures(world, p)) for p in ("fp32", "fp16")]
    rows.append(run_row("served_gpu_instances", lambda: served_figures(world)))
    for precision in ("fp32", "fp16", "int8"):
        rows.append(run_row(f"trt_{precision}", lambda p=precision: trt_figures(world, p)))
    return {
        "machine": harness.machine(),
        "seconds": round(time.perf_counter() - start, 1),
        "ok": not any(row["status"] == "failed" for row in rows),
        "rows": rows,
    }


def figures(result: dict) -> harness.Figures:
    """One line per row: its status and reason, its figures as compact JSON."""
    return harness.Figures(
        title="GPU check without TensorRT",
        columns=["check", "status", "reason", "figures"],
        rows=[
            [row["name"], row["status"], row["reason"], json.dumps(row["figures"])]
            for row in result["rows"]
        ],
        notes=["ok / skipped (with the reason) / failed; see docs/operations.md, GPU check"],
    )


def main() -> None:
    args = harness.parser(__doc__)
    args.add_argument("--steps", type=int, default=5, help="training steps per run (>= 2)")
    options = args.parse_args()
    if options.steps < 2:
        args.error("--steps: at least 2 (the first step is not timed)")
    with tempfile.TemporaryDirectory(prefix="asen-gpu-check-") as tmp:
        result = check_all(Path(tmp), options.steps)
    harness.finish(result, options, figures, indent=2)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
