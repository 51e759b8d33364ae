"""`export_model`: checkpoint -> verified ONNX graph (and TensorRT plan) in the model repository.

Everything is written into a staging folder inside the repository and moved into place
only after it passed verification, so a failed export leaves the repository as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from asen import AsenError
from asen.checkpoint import load_model
from asen.encoders import ModelInfo, TorchEncoder
from export import layout
from export.encoders import OnnxEncoder, TrtEncoder
from export.onnx import OPSET, export_onnx
from export.repository import write_repository
from export.tensorrt import build_engine, require_tensorrt
from export.verify import ONNX_TOLERANCE, TRT_TOLERANCE, Parity, check_parity

Report = Callable[[str], None]


def _figures(parity: Parity) -> dict[str, str]:
    return {
        "parity_max_abs_diff": f"{parity.max_abs_diff:.3g}",
        "parity_min_cosine": f"{parity.min_cosine:.8f}",
    }


def _check_request(repo: Path, name: str, trt: bool, fp16: bool, max_batch: int) -> None:
    """Everything that can be rejected before reading the checkpoint or writing anything."""
    if max_batch < 1:
        raise AsenError(f"--max-batch {max_batch}: must be at least 1")
    if fp16 and not trt:
        raise AsenError("--fp16 applies to the TensorRT engine: add --trt")
    layout.check_name(name)
    if repo.exists() and not repo.is_dir():
        raise AsenError(f"{repo}: is a file, not a model repository folder")
    if trt:
        require_tensorrt()


def _install(staging: Path, repo: Path) -> None:
    """Move each staged `<model>/<version>` folder into the repository, replacing the old one."""
    for version in sorted(staging.glob(f"*/{layout.VERSION}")):
        target = repo / version.parent.name / version.name
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            os.replace(target, staging / f"replaced-{version.parent.name}")
        os.replace(version, target)


def export_model(
    checkpoint: str | Path,
    repo: str | Path = "triton_models",
    name: str = "asen",
    trt: bool = False,
    fp16: bool = False,
    max_batch: int = 64,
    report: Report = lambda line: None,
) -> list[Path]:
    """Export `checkpoint` to `<repo>/<name>_onnx/1/model.onnx` (and, with `trt`,
    `<repo>/<name>_trt/1/model.plan`), each verified against PyTorch and with a
    `model.json` sidecar, and the Triton configs around them (`export.repository`).
    Returns the files written; `report` receives progress lines."""
    repo = Path(repo)
    _check_request(repo, name, trt, fp16, max_batch)
    model, ckpt = load_model(checkpoint, "cpu")
    info = ModelInfo.from_checkpoint(ckpt)
    reference = TorchEncoder(model, info, torch.device("cpu"))
    created = [p for p in (repo, *repo.parents) if not p.exists()]  # removed again on failure
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AsenError(f"{repo}: cannot create the model repository ({e.strerror})") from None
    staging = Path(tempfile.mkdtemp(dir=repo, prefix=".export-"))
    try:
        onnx_path = layout.artifact_path(staging, name, "onnx")
        onnx_path.parent.mkdir(parents=True)
        report(
            f"exporting stage-{info.stage} model (S={info.source_size}, D={info.dim}) "
            f"to ONNX opset {OPSET}"
        )
        export_onnx(model, info, onnx_path, max_batch)
        parity = check_parity(
            reference, OnnxEncoder(onnx_path, "cpu"), ONNX_TOLERANCE, "ONNX Runtime"
        )
        report(f"ONNX Runtime vs PyTorch: {parity}")
        layout.write_sidecar(
            onnx_path, {**info.to_metadata(max_batch), "onnx_opset": str(OPSET), **_figures(parity)}
        )
        if trt:
            plan_path = layout.artifact_path(staging, name, "trt")
            plan_path.parent.mkdir(parents=True)
            precision = "fp16" if fp16 else "fp32"
            report(f"building TensorRT {precision} engine (batch 1..{max_batch})")
            meta = build_engine(onnx_path, plan_path, info, max_batch, fp16)
            layout.write_sidecar(plan_path, meta)
            parity = check_parity(
                reference, TrtEncoder(plan_path), TRT_TOLERANCE[precision], f"TensorRT {precision}"
            )
            report(f"TensorRT {precision} vs PyTorch: {parity}")
            layout.write_sidecar(plan_path, {**meta, **_figures(parity)})
        written = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
        _install(staging, repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(p.is_file() for p in created[-1].rglob("*")):
            shutil.rmtree(created[-1], ignore_errors=True)
    stale = layout.model_dir(repo, name, "trt")
    if not trt and stale.exists():
        report(f"note: {stale} is from an earlier export; rebuild it with --trt")
    return [repo / p for p in written] + write_repository(repo, name, trt)
