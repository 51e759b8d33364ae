"""Encode latency (batch 1) and throughput (batch 32): PyTorch eager against ONNX Runtime on
the CPU, fp32, mixed FP16 and INT8 graphs (`asen export --precision`), plus ONNX Runtime CUDA
and TensorRT fp32/fp16/int8 (strongly typed, from the same graphs) where a GPU has them.

    python -m benchmarks.bench_encode [--config small paper] [--checkpoint best.pt]
        [--figures docs/figures/encode.json]

Every backend is measured in the same run, interleaved: each round times every backend once
(a batch-32 call and a batch-1 call, after warm-up), and the figures are medians over the
rounds; ratios to ONNX Runtime fp32 are the medians of the per-round ratios. The INT8 graph
is calibrated on synthetic garment images. Encoders are opened by backend name
(asen.backends.open_encoder), as `asen eval --backend` opens them. Prints one JSON object; a
backend that cannot run here has a `skipped` reason instead.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from asen.export.layout import write_sidecar
from asen.export.onnx import export_onnx, physical_cores
from asen.export.precision import to_fp16, to_int8
from asen.export.tensorrt import build_engine, require_tensorrt
from asen.export.verify import probe_inputs

from asen import AsenError
from asen.backends import open_encoder
from asen.checkpoint import load_model
from asen.config import load_config
from asen.encoders import Encoder
from asen.model.asen import ASENPP
from asen.model.shape import ModelInfo
from benchmarks import harness
from benchmarks.models import CONFIGS, random_checkpoint

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


def build(
    config: str, checkpoint: Path | None, folder: Path
) -> tuple[ASENPP, ModelInfo, str, Path]:
    """The model to time: a checkpoint's, or a randomly initialised stage-2 model (saved in
    `folder`, so that the PyTorch backend opens it as it opens any checkpoint)."""
    if checkpoint:
        model, ckpt = load_model(checkpoint, "cpu")
        return model, ModelInfo.from_checkpoint(ckpt), str(checkpoint), checkpoint
    path = random_checkpoint(config, folder / "model.pt")
    model, ckpt = load_model(path, "cpu")
    m = load_config(CONFIGS[config]).model
    return (
        model.eval(),
        ModelInfo.from_checkpoint(ckpt),
        f"{config} ({m.global_backbone}/{m.local_backbone})",
        path,
    )


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


def _plan(onnx_path: Path, info: ModelInfo, batch: int, precision: str) -> Path:
    """A TensorRT engine built from `onnx_path`, with its sidecar."""
    plan = onnx_path.parent / "plan" / "model.plan"
    plan.parent.mkdir()
    write_sidecar(plan, build_engine(onnx_path, plan, info, batch, precision))
    return plan


def _opener(backend: str, model: Path, batch: int, device: str = "auto") -> Callable[[], Encoder]:
    return lambda: open_encoder(backend, str(model), device=device, batch_size=batch)


def backends(checkpoint: Path, info: ModelInfo, paths: dict[str, Path], batch: int) -> dict:
    """Every backend by name: a function opening its encoder, or why it cannot run here."""
    gpu = torch.cuda.is_available()
    out: dict[str, Backend] = {
        "torch_cpu": _opener("torch", checkpoint, batch, "cpu"),
        "onnx_cpu": _opener("onnx", paths["fp32"], batch, "cpu"),
        "onnx_cpu_fp16": _opener("onnx", paths["fp16"], batch, "cpu"),
        "onnx_cpu_int8": _opener("onnx", paths["int8"], batch, "cpu"),
        "torch_cuda": _opener("torch", checkpoint, batch, "cuda") if gpu else "no CUDA GPU",
        "onnx_cuda": _opener("onnx", paths["fp32"], batch, "cuda")
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers()
        else "needs onnxruntime-gpu and a CUDA GPU",
    }
    try:
        require_tensorrt()
        for precision, key in (("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8_trt")):
            out[f"trt_{precision}"] = lambda p=precision, k=key: open_encoder(  # noqa: B023
                "trt", str(_plan(paths[k], info, batch, p)), batch_size=batch
            )
    except AsenError as e:
        out["trt_fp32"] = out["trt_fp16"] = out["trt_int8"] = str(e)
    assert tuple(out) == BACKENDS, "keep BACKENDS (the --only choices) in step"
    return out


def interleaved(encoders: dict[str, Encoder], info: ModelInfo, batch: int, rounds: int) -> dict:
    """Per backend: median batch-`batch` throughput and batch-1 latency over `rounds` rounds,
    each round timing every backend in turn; ratios to the baseline per round, then median."""
    rng = np.random.default_rng(0)
    s = info.source_size
    images = rng.integers(0, 256, (batch, 3, s, s), dtype=np.uint8)
    attributes = rng.integers(0, len(info.attributes), batch).astype(np.int64)
    calls, reps = {}, {}
    for key, enc in encoders.items():
        calls[f"{key} b{batch}"] = lambda e=enc: e.encode(images, attributes)
        calls[f"{key} b1"] = lambda e=enc: e.encode(images[:1], attributes[:1])
        reps[f"{key} b{batch}"], reps[f"{key} b1"] = 1, 3
    times = harness.interleaved(calls, rounds, warmup=1, reps=reps)
    tput = {k: [batch / t for t in times[f"{k} b{batch}"]] for k in encoders}
    lat = {k: times[f"{k} b1"] for k in encoders}
    out = {}
    for key in encoders:
        row = {
            f"throughput_b{batch}": harness.median(tput[key], 1),
            "latency_ms_b1": round(1000 * harness.median(lat[key]), 2),
        }
        if BASELINE in encoders and key != BASELINE:
            row["throughput_vs_onnx_fp32"] = round(
                harness.median_ratio(tput[key], tput[BASELINE]), 2
            )
            row["latency_speedup_vs_onnx_fp32"] = round(
                harness.median_ratio(lat[BASELINE], lat[key]), 2
            )
        out[key] = row
    return out


def run_config(config: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model, info, name, checkpoint = build(config, args.checkpoint, Path(tmp))
        report: dict = {"model": name, "source_size": info.source_size, "embedding_dim": info.dim}
        paths = graphs(model, info, Path(tmp) / "graphs", args.batch)
        encoders: dict[str, Encoder] = {}
        results: dict[str, dict] = {}
        for key, make in backends(checkpoint, info, paths, args.batch).items():
            if args.only and key not in args.only:
                continue
            if isinstance(make, str):
                results[key] = {"skipped": make}
            else:
                encoders[key] = make()
        results.update(interleaved(encoders, info, args.batch, args.rounds))
        for encoder in encoders.values():
            encoder.close()
    report["results"] = {k: results[k] for k in BACKENDS if k in results}
    return report


def figures(report: dict, args: argparse.Namespace) -> harness.Figures:
    """One row per config and backend that ran; the skipped ones in the notes."""
    rows, notes = [], []
    for config, found in report["configs"].items():
        for backend, row in found["results"].items():
            if "skipped" in row:
                notes.append(f"{config} {backend}: skipped ({row['skipped']})")
                continue
            rows.append(
                [
                    f"{config}: {found['model']}",
                    backend,
                    row[f"throughput_b{args.batch}"],
                    row["latency_ms_b1"],
                    row.get("throughput_vs_onnx_fp32", 1.0 if backend == BASELINE else None),
                    row.get("latency_speedup_vs_onnx_fp32", 1.0 if backend == BASELINE else None),
                ]
            )
    notes += [
        f"medians over {args.rounds} interleaved rounds; ratios are medians of per-round ratios",
        f"threads: torch {report['torch_threads']}, onnxruntime {report['onnxruntime_threads']}",
        f"1-minute load average {report['load_average_1min_before']} before, "
        f"{report['load_average_1min_after']} after",
    ]
    columns = [
        "model",
        "backend",
        f"images/s (batch {args.batch})",
        "ms (batch 1)",
        "throughput vs onnx_cpu",
        "latency speedup vs onnx_cpu",
    ]
    return harness.Figures("Encode speed by backend", columns, rows, notes)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--config", nargs="+", choices=sorted(CONFIGS), default=["small"])
    parser.add_argument("--checkpoint", type=Path, help="time this checkpoint's model instead")
    parser.add_argument("--batch", type=int, default=32, help="throughput batch size")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians)")
    parser.add_argument(
        "--only", nargs="*", choices=BACKENDS, help="backends to time (default: all)"
    )
    args = parser.parse_args()
    report: dict = {
        "cpu": harness.cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": physical_cores(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "load_average_1min_before": harness.load_average()[0],
        "configs": {},
    }
    configs = ["checkpoint"] if args.checkpoint else args.config
    for config in configs:
        report["configs"][config] = run_config(config, args)
    report["load_average_1min_after"] = harness.load_average()[0]  # other work skews timings
    harness.finish(report, args, lambda r: figures(r, args), indent=2)


if __name__ == "__main__":
    main()
