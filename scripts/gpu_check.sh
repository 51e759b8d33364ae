#!/usr/bin/env bash
# TensorRT check for a machine with an NVIDIA GPU and TensorRT 10 or 11 (pip install
# tensorrt-cu13, or NVIDIA's TensorRT/Triton container): exports fp32, fp16 and int8 graphs
# (int8 calibrated on the dataset's train split), builds a strongly typed engine from each,
# checks parity and mAP against PyTorch, times every backend, and prints a JSON summary.
# Exits 1 if a target is missed.
#
#   scripts/gpu_check.sh [CHECKPOINT [DATA]]
#
# Without CHECKPOINT it trains a small stage-1 + stage-2 model for a few steps on a synthetic
# dataset (DATA, or one it writes). BENCH_ARGS passes options to benchmarks/bench_encode.py;
# CALIBRATION_IMAGES (default 256) how many train images calibrate int8.
# Targets: fp32 parity as `asen export` checks it; fp16 cosine >= 0.999 on every verified row
# and |mAP(fp16) - mAP(torch)| <= 0.005; int8 |mAP(int8) - mAP(torch)| <= 0.01 (test split).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/asen ]]; then ASEN=.venv/bin/asen PY=.venv/bin/python; else ASEN=asen PY=python3; fi
check='from asen import AsenError
from export.tensorrt import require_tensorrt
try:
    require_tensorrt()
except AsenError as e:
    raise SystemExit(f"error: {e}")'
"$PY" -c "$check"  # fails fast, with the reason, where TensorRT or a GPU is missing
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ckpt=${1:-}
data=${2:-}

if [[ -z $data ]]; then
    "$ASEN" data synth "$work/data" --train 300 --eval 100 >&2
    data=$work/data
fi
if [[ -z $ckpt ]]; then
    steps=(--epochs 1 --set train.triplets_per_epoch=512 --workers 2)
    "$ASEN" train --data "$data" -c small "${steps[@]}" --out "$work/s1" >&2
    "$ASEN" train --data "$data" -c small --stage 2 --init "$work/s1/best.pt" "${steps[@]}" \
        --out "$work/s2" >&2
    ckpt=$work/s2/best.pt
fi

"$ASEN" eval "$ckpt" --data "$data" --backend torch --json "$work/map_torch.json" >&2
# one export, every precision; a failed verification is a finding, not a crash: record it
if "$ASEN" export "$ckpt" --repo "$work/repo" --trt --precision fp32,fp16,int8 \
    --calibrate "$data" --calibration-images "${CALIBRATION_IMAGES:-256}" \
    >"$work/export.log" 2>&1; then
    for precision in fp32 fp16 int8; do
        model=asen_trt; [[ $precision != fp32 ]] && model=asen_trt_$precision
        "$ASEN" eval "$work/repo/$model" --data "$data" --backend trt \
            --json "$work/map_$precision.json" >&2
    done
fi
cat "$work/export.log" >&2
# shellcheck disable=SC2086  # BENCH_ARGS: extra benchmark options, e.g. "--rounds 3"
"$PY" benchmarks/bench_encode.py --checkpoint "$ckpt" ${BENCH_ARGS:-} >"$work/bench.json"

"$PY" - "$work" <<'EOF'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
def read(name):
    path = work / name
    return json.loads(path.read_text()) if path.is_file() else None

torch_map = read("map_torch.json")["overall_map"]
summary = {"torch_map": torch_map, "benchmark": read("bench.json"), "ok": True,
           "export_log_tail": (work / "export.log").read_text().splitlines()[-4:]}
max_drop = {"fp32": 0.001, "fp16": 0.005, "int8": 0.01}
for precision in ("fp32", "fp16", "int8"):
    model = "asen_trt" if precision == "fp32" else f"asen_trt_{precision}"
    sidecar = read(f"repo/{model}/1/model.json")
    result = read(f"map_{precision}.json")
    entry = {"exported": sidecar is not None}
    if sidecar and result:
        entry.update({
            "gpu": sidecar["gpu_name"], "tensorrt": sidecar["tensorrt_version"],
            "strongly_typed": sidecar.get("strongly_typed"),
            "parity_max_abs_diff": float(sidecar["parity_max_abs_diff"]),
            "parity_min_cosine": float(sidecar["parity_min_cosine"]),
            "map": result["overall_map"], "map_delta": result["overall_map"] - torch_map,
        })
        entry["ok"] = abs(entry["map_delta"]) <= max_drop[precision] and (
            precision != "fp16" or entry["parity_min_cosine"] >= 0.999)
    else:
        entry["ok"] = False
    summary[precision] = entry
    summary["ok"] = summary["ok"] and entry["ok"]
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["ok"] else 1)
EOF
