#!/usr/bin/env bash
# The main job on the built-in synthetic dataset: set up, generate, train both stages,
# evaluate. BUDGET (minutes per stage, default 10) and WORK (default runs/demo) override.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUDGET="${BUDGET:-10}"
WORK="${WORK:-runs/demo}"
asen() { .venv/bin/asen "$@"; }

[ -f "$WORK/data/dataset.yaml" ] || asen data synth "$WORK/data"
[ -f "$WORK/stage1/last.pt" ] || asen train --data "$WORK/data" -c small --time-budget "$BUDGET" --out "$WORK/stage1"
[ -f "$WORK/stage2/last.pt" ] || asen train --data "$WORK/data" -c small --stage 2 \
  --init "$WORK/stage1/best.pt" --time-budget "$BUDGET" --out "$WORK/stage2"
asen eval "$WORK/stage1/best.pt" --data "$WORK/data" --json "$WORK/eval-stage1-torch.json"
asen eval "$WORK/stage2/best.pt" --data "$WORK/data" --json "$WORK/eval-stage2-torch.json"
