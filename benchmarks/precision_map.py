"""Test-split mAP of every exported precision against PyTorch fp32, for one checkpoint and
dataset: exports fp32, fp16 and int8 (calibrated on the dataset's train split, verified on
its valid split), then evaluates PyTorch and each ONNX Runtime graph on the test split.

    python -m benchmarks.precision_map CHECKPOINT DATA [--calibration-images 512]
        [--figures PATH]

Prints one JSON object: overall test mAP per backend, the difference to PyTorch fp32, and
whether it is within the bound set for its precision (fp32 0.001, fp16 0.005, int8 0.01).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from asen.export.build import export_model
from asen.export.calibrate import CalibrationSource
from asen.export.layout import in_model

from asen.backends import open_encoder
from asen.data.splits import open_dataset
from asen.evaluate import evaluate
from benchmarks import harness

BOUND = {"fp32": 0.001, "fp16": 0.005, "int8": 0.01, "int8_trt": 0.01}
MODELS = {
    "fp32": "asen_onnx",
    "fp16": "asen_onnx_fp16",
    "int8": "asen_onnx_int8",
    "int8_trt": "asen_onnx_int8_trt",
}


def figures(report: dict) -> harness.Figures:
    """One row per backend: its test mAP and the difference to PyTorch fp32."""
    rows: list[list] = [["PyTorch fp32", report["torch_fp32"], 0.0, None, None]]
    for key in MODELS:
        row = report[f"onnx_{key}"]
        within = "yes" if row["within"] else "no"
        rows.append([f"ONNX Runtime {key}", row["map"], row["delta"], BOUND[key], within])
    columns = ["backend", f"{report['split']} mAP", "difference", "bound", "within"]
    notes = [f"checkpoint {report['checkpoint']}, data {report['data']}", *report["export"]]
    return harness.Figures("Retrieval quality of each exported precision", columns, rows, notes)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    dataset = open_dataset(args.data)
    report: dict = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "split": args.split,
        "load_average_1min_before": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        lines: list[str] = []
        export_model(
            args.checkpoint,
            repo,
            precisions=["fp32", "fp16", "int8"],
            calibrate=CalibrationSource(args.data, "train", args.calibration_images),
            max_map_drop=1.0,  # measured here on the test split instead
            min_cosine=0.0,
            report=lines.append,
        )
        report["export"] = [line for line in lines if " vs PyTorch fp32: " in line]
        torch_encoder = open_encoder("torch", str(args.checkpoint), device="cpu")
        torch_map = evaluate(torch_encoder, dataset, args.split, workers=0).overall_map
        report["torch_fp32"] = round(torch_map, 5)
        for key, model in MODELS.items():
            encoder = open_encoder("onnx", str(in_model(repo, model)), device="cpu")
            result = evaluate(encoder, dataset, args.split, workers=0)
            delta = result.overall_map - torch_map
            report[f"onnx_{key}"] = {
                "map": round(result.overall_map, 5),
                "delta": round(delta, 5),
                "within": abs(delta) <= BOUND[key],
            }
    report["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    harness.finish(report, args, figures, indent=2)


if __name__ == "__main__":
    main()
