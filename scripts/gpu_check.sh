#!/usr/bin/env bash
# TensorRT check for a machine with an NVIDIA GPU and TensorRT 10 (pip install tensorrt-cu13,
# or NVIDIA's TensorRT/Triton container): builds fp32 and fp16 engines from a checkpoint,
# checks parity and mAP against PyTorch, times every backend, and prints a JSON summary.
# Exits 1 if a target is missed.
#
#   scripts/gpu_check.sh [CHECKPOINT [DATA]]
#
# Without CHECKPOINT it trains a small stage-1 + stage-2 model for a few steps on a synthetic
# dataset (DATA, or one it writes). BENCH_ARGS passes options to benchmarks/bench_encode.py.
# Targets: fp32 parity as `asen export` checks it; fp16 cosine >= 0.999 on every probe row
# and |mAP(fp16) - mAP(torch)| <= 0.005.
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
for precision in fp32 fp16; do
    flags=(--trt)
    [[ $precision == fp16 ]] && flags+=(--fp16)
    # a failed parity check is a finding, not a crash: record it and go on
    if "$ASEN" export "$ckpt" --repo "$work/repo_$precision" "${flags[@]}" \
        >"$work/export_$precision.log" 2>&1; then
        "$ASEN" eval "$work/repo_$precision" --data "$data" --backend trt \
            --json "$work/map_$precision.json" >&2
    fi
    cat "$work/export_$precision.log" >&2
done
# shellcheck disable=SC2086  # BENCH_ARGS: extra benchmark options, e.g. "--runs 5 --budget 2"
"$PY" benchmarks/bench_encode.py --checkpoint "$ckpt" ${BENCH_ARGS:-} >"$work/bench.json"

"$PY" - "$work" <<'EOF'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
def read(name):
    path = work / name
    return json.loads(path.read_text()) if path.is_file() else None

torch_map = read("map_torch.json")["overall_map"]
summary = {"torch_map": torch_map, "benchmark": read("bench.json"), "ok": True}
for precision in ("fp32", "fp16"):
    sidecar = read(f"repo_{precision}/asen_trt/1/model.json")
    result = read(f"map_{precision}.json")
    entry = {"exported": sidecar is not None,
             "export_log_tail": (work / f"export_{precision}.log").read_text().splitlines()[-3:]}
    if sidecar and result:
        entry.update({
            "gpu": sidecar["gpu_name"], "tensorrt": sidecar["tensorrt_version"],
            "parity_max_abs_diff": float(sidecar["parity_max_abs_diff"]),
            "parity_min_cosine": float(sidecar["parity_min_cosine"]),
            "map": result["overall_map"], "map_delta": result["overall_map"] - torch_map,
        })
        entry["ok"] = precision == "fp32" or (
            entry["parity_min_cosine"] >= 0.999 and abs(entry["map_delta"]) <= 0.005)
    else:
        entry["ok"] = False
    summary[precision] = entry
    summary["ok"] = summary["ok"] and entry["ok"]
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["ok"] else 1)
EOF
