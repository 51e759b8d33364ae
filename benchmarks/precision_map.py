"""Test-split mAP of every exported precision against PyTorch fp32, for one checkpoint and
dataset: exports fp32, fp16 and int8 (calibrated on the dataset's train split, verified on
its valid split), then evaluates PyTorch and each ONNX Runtime graph on the test split.

    python benchmarks/precision_map.py CHECKPOINT DATA [--calibration-images 512]

Prints one JSON object: overall test mAP per backend, the difference to PyTorch fp32, and
whether it is within the issue's bounds (fp16 0.005, int8 0.01).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from asen.data.splits import open_dataset
from asen.encoders import TorchEncoder
from asen.evaluate import evaluate
from asen.export.build import export_model
from asen.export.calibrate import CalibrationSource
from asen.export.encoders import OnnxEncoder
from asen.export.layout import in_model

BOUND = {"fp32": 0.001, "fp16": 0.005, "int8": 0.01, "int8_trt": 0.01}
MODELS = {
    "fp32": "asen_onnx",
    "fp16": "asen_onnx_fp16",
    "int8": "asen_onnx_int8",
    "int8_trt": "asen_onnx_int8_trt",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        torch_map = evaluate(
            TorchEncoder.from_checkpoint(args.checkpoint, "cpu"), dataset, args.split, workers=0
        ).overall_map
        report["torch_fp32"] = round(torch_map, 5)
        for key, model in MODELS.items():
            result = evaluate(
                OnnxEncoder(in_model(repo, model), "cpu"), dataset, args.split, workers=0
            )
            delta = result.overall_map - torch_map
            report[f"onnx_{key}"] = {
                "map": round(result.overall_map, 5),
                "delta": round(delta, 5),
                "within": abs(delta) <= BOUND[key],
            }
    report["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
