"""Encode latency (batch 1) and throughput (batch 32): PyTorch eager against ONNX Runtime on
the CPU, fp32, mixed FP16 and INT8 graphs (`asen export --precision`), plus ONNX Runtime CUDA
and TensorRT fp32/fp16/int8 (strongly typed, from the same graphs) where a GPU has them.

    python benchmarks/bench_encode.py [--config small paper] [--checkpoint best.pt]

Every backend is measured in the same run, interleaved: each round times every backend once
(a batch-32 call and a batch-1 call, after warm-up), and the figures are medians over the
rounds; ratios to ONNX Runtime fp32 are the medians of the per-round ratios. The INT8 graph
is calibrated on synthetic garment images. Prints one JSON object; a backend that cannot run
here has a `skipped` reason instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from models import CONFIGS, random_model

from asen import AsenError
from asen.checkpoint import load_model
from asen.encoders import Encoder, TorchEncoder
from asen.model.asen import ASENPP
from asen.model.shape import ModelInfo
from asen.export.encoders import OnnxEncoder, TrtEncoder
from asen.export.layout import write_sidecar
from asen.export.onnx import export_onnx, physical_cores
from asen.export.precision import to_fp16, to_int8
from asen.export.tensorrt import build_engine, require_tensorrt
from asen.export.verify import probe_inputs

Backend = Callable[[], Encoder] | str
BACKENDS = (
    "torch_cpu",
    "onnx_cpu",
    "onnx_cpu_fp16",
    "onnx_cpu_int8",
    "torch_cuda",
    "onnx_cuda",
    "trt_fp32",
    "trt_fp16",
    "trt_int8",
)
BASELINE = "onnx_cpu"


def build(config: str, checkpoint: Path | None) -> tuple[ASENPP, ModelInfo, str]:
    """The model to time: a checkpoint's, or a randomly initialised stage-2 model."""
    if checkpoint:
        model, ckpt = load_model(checkpoint, "cpu")
        return model, ModelInfo.from_checkpoint(ckpt), str(checkpoint)
    model, cfg, attributes = random_model(config)
    info = ModelInfo.from_config(cfg.model, attributes, 2)
    return model, info, f"{config} ({cfg.model.global_backbone}/{cfg.model.local_backbone})"


def cpu_name() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def graphs(model: ASENPP, info: ModelInfo, folder: Path, batch: int) -> dict[str, Path]:
    """The fp32 graph and its FP16 and INT8 conversions (both INT8 graphs, one calibration)."""
    paths = {p: folder / p / "model.onnx" for p in ("fp32", "fp16", "int8", "int8_trt")}
    for path in paths.values():
        path.parent.mkdir(parents=True)
    export_onnx(model, info, paths["fp32"], max_batch=batch)
    to_fp16(paths["fp32"], paths["fp16"])
    images, attributes = probe_inputs(info, n_images=8)  # garments and noise, every attribute
    to_int8(
        paths["fp32"], {"cpu": paths["int8"], "tensorrt": paths["int8_trt"]}, images, attributes
    )
    return paths


def _trt(onnx_path: Path, info: ModelInfo, batch: int, precision: str) -> TrtEncoder:
    plan = onnx_path.parent / "plan" / "model.plan"
    plan.parent.mkdir()
    write_sidecar(plan, build_engine(onnx_path, plan, info, batch, precision))
    return TrtEncoder(plan, batch_size=batch)


def backends(model: ASENPP, info: ModelInfo, paths: dict[str, Path], batch: int) -> dict:
    """Every backend by name: a function making its encoder, or why it cannot run here."""
    gpu = torch.cuda.is_available()

    def onnx(key: str, device: str = "cpu") -> Callable[[], Encoder]:
        return lambda: OnnxEncoder(paths[key], device, batch_size=batch)

    out: dict[str, Backend] = {
        "torch_cpu": lambda: TorchEncoder(model, info, torch.device("cpu"), batch_size=batch),
        "onnx_cpu": onnx("fp32"),
        "onnx_cpu_fp16": onnx("fp16"),
        "onnx_cpu_int8": onnx("int8"),
        "torch_cuda": (
            lambda: TorchEncoder(
                copy.deepcopy(model).to("cuda", memory_format=torch.channels_last),
                info,
                torch.device("cuda"),
                batch_size=batch,
            )
        )
        if gpu
        else "no CUDA GPU",
        "onnx_cuda": onnx("fp32", "cuda")
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers()
        else "needs onnxruntime-gpu and a CUDA GPU",
    }
    try:
        require_tensorrt()
        for precision, key in (("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8_trt")):
            out[f"trt_{precision}"] = (
                lambda p=precision, k=key: _trt(paths[k], info, batch, p)  # noqa: B023
            )
    except AsenError as e:
        out["trt_fp32"] = out["trt_fp16"] = out["trt_int8"] = str(e)
    assert tuple(out) == BACKENDS, "keep BACKENDS (the --only choices) in step"
    return out


def _seconds(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def interleaved(encoders: dict[str, Encoder], info: ModelInfo, batch: int, rounds: int) -> dict:
    """Per backend: median batch-`batch` throughput and batch-1 latency over `rounds` rounds,
    each round timing every backend in turn; ratios to the baseline per round, then median."""
    rng = np.random.default_rng(0)
    s = info.source_size
    images = rng.integers(0, 256, (batch, 3, s, s), dtype=np.uint8)
    attributes = rng.integers(0, len(info.attributes), batch).astype(np.int64)
    for enc in encoders.values():  # warm-up
        enc.encode(images, attributes)
        enc.encode(images[:1], attributes[:1])
    tput: dict[str, list[float]] = {k: [] for k in encoders}
    lat: dict[str, list[float]] = {k: [] for k in encoders}
    for _ in range(rounds):
        for key, enc in encoders.items():
            tput[key].append(batch / _seconds(lambda e=enc: e.encode(images, attributes), 1))
            lat[key].append(_seconds(lambda e=enc: e.encode(images[:1], attributes[:1]), 3))
    out = {}
    for key in encoders:
        row = {
            f"throughput_b{batch}": round(statistics.median(tput[key]), 1),
            "latency_ms_b1": round(1000 * statistics.median(lat[key]), 2),
        }
        if BASELINE in encoders and key != BASELINE:
            row["throughput_vs_onnx_fp32"] = round(
                statistics.median(a / b for a, b in zip(tput[key], tput[BASELINE], strict=True)),
                2,
            )
            row["latency_speedup_vs_onnx_fp32"] = round(
                statistics.median(b / a for a, b in zip(lat[key], lat[BASELINE], strict=True)), 2
            )
        out[key] = row
    return out


def run_config(config: str, args: argparse.Namespace) -> dict:
    model, info, name = build(config, args.checkpoint)
    report: dict = {"model": name, "source_size": info.source_size, "embedding_dim": info.dim}
    with tempfile.TemporaryDirectory() as tmp:
        paths = graphs(model, info, Path(tmp), args.batch)
        encoders: dict[str, Encoder] = {}
        results: dict[str, dict] = {}
        for key, make in backends(model, info, paths, args.batch).items():
            if args.only and key not in args.only:
                continue
            if isinstance(make, str):
                results[key] = {"skipped": make}
            else:
                encoders[key] = make()
        results.update(interleaved(encoders, info, args.batch, args.rounds))
    report["results"] = {k: results[k] for k in BACKENDS if k in results}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", choices=sorted(CONFIGS), default=["small"])
    parser.add_argument("--checkpoint", type=Path, help="time this checkpoint's model instead")
    parser.add_argument("--batch", type=int, default=32, help="throughput batch size")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians)")
    parser.add_argument(
        "--only", nargs="*", choices=BACKENDS, help="backends to time (default: all)"
    )
    args = parser.parse_args()
    report: dict = {
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": physical_cores(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "load_average_1min_before": round(os.getloadavg()[0], 2),
        "configs": {},
    }
    configs = ["checkpoint"] if args.checkpoint else args.config
    for config in configs:
        report["configs"][config] = run_config(config, args)
    report["load_average_1min_after"] = round(os.getloadavg()[0], 2)  # other work skews timings
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
