#!/usr/bin/env bash
# What a GPU machine can run without TensorRT, each check its own row of one JSON summary
# (name, status ok|skipped|failed, reason, figures): CUDA training steps in fp32 and bf16
# against the CPU, ONNX Runtime's CUDA execution provider on the fp32 and fp16 graphs (mAP,
# images/s; onnxruntime-gpu is pip-installed into its own environment, ASEN_GPU_VENV), the
# encoder served with GPU instances, and TensorRT engines where TensorRT is installed. On a
# machine without a GPU every row is skipped with its reason. Exits 1 if a row failed.
#
#   scripts/gpu_check.sh [--steps N] [--figures PATH]
#
# The checks are benchmarks/gpu_check.py (docs/operations.md, "GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
exec "$PY" -m benchmarks.gpu_check "$@"
