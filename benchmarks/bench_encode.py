"""Encode latency (batch 1) and throughput (batch 32): PyTorch eager against ONNX Runtime on
the CPU in one run, plus ONNX Runtime CUDA and TensorRT fp32/fp16 where a GPU has them.

    python benchmarks/bench_encode.py [--config small|paper] [--checkpoint best.pt]

Prints one JSON object; a backend that cannot run here has a `skipped` reason instead.
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
from asen.encoders import Encoder, ModelInfo, TorchEncoder
from asen.model.asen import ASENPP
from export.encoders import OnnxEncoder, TrtEncoder
from export.layout import write_sidecar
from export.onnx import export_onnx, physical_cores
from export.tensorrt import build_engine, require_tensorrt

Backend = Callable[[], Encoder] | str
BACKENDS = ("torch_cpu", "onnx_cpu", "torch_cuda", "onnx_cuda", "trt_fp32", "trt_fp16")


def build(config: str, checkpoint: Path | None) -> tuple[ASENPP, ModelInfo, str]:
    """The model to time: a checkpoint's, or a randomly initialised stage-2 model."""
    if checkpoint:
        model, ckpt = load_model(checkpoint, "cpu")
        return model, ModelInfo.from_checkpoint(ckpt), str(checkpoint)
    model, cfg, attributes = random_model(config)
    info = ModelInfo.from_config(cfg.model, attributes, 2)
    return model, info, f"{config} ({cfg.model.global_backbone}/{cfg.model.local_backbone})"


def timed(fn: Callable[[], object], runs: int, budget_s: float) -> float:
    """Median seconds of `fn` after one warm-up call; stops early (>= 3 runs) past `budget_s`."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(encoder: Encoder, info: ModelInfo, batch: int, runs: int, budget_s: float) -> dict:
    rng = np.random.default_rng(0)
    s = info.source_size
    images = rng.integers(0, 256, (batch, 3, s, s), dtype=np.uint8)
    attributes = rng.integers(0, len(info.attributes), batch).astype(np.int64)
    latency = timed(lambda: encoder.encode(images[:1], attributes[:1]), runs, budget_s)
    per_batch = timed(lambda: encoder.encode(images, attributes), max(3, runs // 4), budget_s)
    return {
        "latency_ms_b1": round(1000 * latency, 2),
        f"throughput_b{batch}": round(batch / per_batch, 1),
    }


def cpu_name() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _trt(onnx_path: Path, info: ModelInfo, batch: int, fp16: bool) -> TrtEncoder:
    plan = onnx_path.parent / ("fp16" if fp16 else "fp32") / "model.plan"
    plan.parent.mkdir()
    write_sidecar(plan, build_engine(onnx_path, plan, info, batch, fp16))
    return TrtEncoder(plan, batch_size=batch)


def backends(model: ASENPP, info: ModelInfo, onnx_path: Path, batch: int) -> dict[str, Backend]:
    """Every backend by name: a function making its encoder, or why it cannot run here."""
    gpu = torch.cuda.is_available()
    out: dict[str, Backend] = {
        "torch_cpu": lambda: TorchEncoder(model, info, torch.device("cpu"), batch_size=batch),
        "onnx_cpu": lambda: OnnxEncoder(onnx_path, "cpu", batch_size=batch),
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
        "onnx_cuda": (lambda: OnnxEncoder(onnx_path, "cuda", batch_size=batch))
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers()
        else "needs onnxruntime-gpu and a CUDA GPU",
    }
    try:
        require_tensorrt()
        out["trt_fp32"] = lambda: _trt(onnx_path, info, batch, False)
        out["trt_fp16"] = lambda: _trt(onnx_path, info, batch, True)
    except AsenError as e:
        out["trt_fp32"] = out["trt_fp16"] = str(e)
    assert tuple(out) == BACKENDS, "keep BACKENDS (the --only choices) in step"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--checkpoint", type=Path, help="time this checkpoint's model instead")
    parser.add_argument("--batch", type=int, default=32, help="throughput batch size")
    parser.add_argument("--runs", type=int, default=20, help="batch-1 runs (batch runs: a quarter)")
    parser.add_argument(
        "--budget", type=float, default=10.0, help="seconds per measurement at most"
    )
    parser.add_argument(
        "--only", nargs="*", choices=BACKENDS, help="backends to time (default: all)"
    )
    args = parser.parse_args()
    model, info, name = build(args.config, args.checkpoint)
    report: dict = {
        "model": name,
        "source_size": info.source_size,
        "embedding_dim": info.dim,
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": physical_cores(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "load_average_1min_before": round(os.getloadavg()[0], 2),
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, info, onnx_path, max_batch=args.batch)
        for key, make in backends(model, info, onnx_path, args.batch).items():
            if args.only and key not in args.only:
                continue
            if isinstance(make, str):
                report["results"][key] = {"skipped": make}
            else:
                report["results"][key] = measure(make(), info, args.batch, args.runs, args.budget)
    report["load_average_1min_after"] = round(os.getloadavg()[0], 2)  # other work skews timings
    results, tput = report["results"], f"throughput_b{args.batch}"
    if "latency_ms_b1" in results.get("torch_cpu", {}) and "latency_ms_b1" in results.get(
        "onnx_cpu", {}
    ):
        report["onnx_cpu_vs_torch_cpu"] = {
            "throughput_ratio": round(results["onnx_cpu"][tput] / results["torch_cpu"][tput], 2),
            "latency_speedup": round(
                results["torch_cpu"]["latency_ms_b1"] / results["onnx_cpu"]["latency_ms_b1"], 2
            ),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
