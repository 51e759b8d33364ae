#!/usr/bin/env bash
# The main job on the built-in synthetic dataset: set up, generate, train both stages,
# evaluate, export (ONNX, verified), serve with Triton, and evaluate through torch, onnx
# and triton side by side. BUDGET (minutes per stage, default 10), WORK (default
# runs/demo) and HTTP_PORT/GRPC_PORT/METRICS_PORT (default 8000/8001/8002) override.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUDGET="${BUDGET:-10}"
WORK="${WORK:-runs/demo}"
HTTP_PORT="${HTTP_PORT:-8000}" GRPC_PORT="${GRPC_PORT:-8001}" METRICS_PORT="${METRICS_PORT:-8002}"
asen() { .venv/bin/asen "$@"; }

[ -f "$WORK/data/dataset.yaml" ] || asen data synth "$WORK/data"
[ -f "$WORK/stage1/last.pt" ] || asen train --data "$WORK/data" -c small --time-budget "$BUDGET" --out "$WORK/stage1"
[ -f "$WORK/stage2/last.pt" ] || asen train --data "$WORK/data" -c small --stage 2 \
  --init "$WORK/stage1/best.pt" --time-budget "$BUDGET" --out "$WORK/stage2"
asen eval "$WORK/stage1/best.pt" --data "$WORK/data" --json "$WORK/eval-stage1-torch.json"
asen eval "$WORK/stage2/best.pt" --data "$WORK/data" --json "$WORK/eval-torch.json"

asen export "$WORK/stage2/best.pt" --repo "$WORK/triton_models"
asen eval "$WORK/triton_models" --backend onnx --data "$WORK/data" --json "$WORK/eval-onnx.json"

.venv/bin/asen serve --repo "$WORK/triton_models" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
  --metrics-port "$METRICS_PORT" > "$WORK/serve.out" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  grep -q "ready" "$WORK/serve.out" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$WORK/serve.out"; exit 1; }
  sleep 1
done
cat "$WORK/serve.out"
asen eval asen --backend triton --url "127.0.0.1:$GRPC_PORT" --data "$WORK/data" --json "$WORK/eval-triton.json"
asen compare "$WORK/eval-torch.json" "$WORK/eval-onnx.json" "$WORK/eval-triton.json"
