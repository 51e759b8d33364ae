#!/usr/bin/env bash
# Export the mounted checkpoint into $ASEN_REPO once (ONNX, plus a TensorRT plan when a GPU
# is visible), then serve the repository with this container's tritonserver.
set -euo pipefail
if [ ! -f "$ASEN_REPO/asen/config.pbtxt" ]; then
  if [ ! -f "$ASEN_CHECKPOINT" ]; then
    echo "asen: no model repository in $ASEN_REPO and no checkpoint at $ASEN_CHECKPOINT" >&2
    exit 1
  fi
  trt=()
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then trt=(--trt); fi
  asen export "$ASEN_CHECKPOINT" --repo "$ASEN_REPO" "${trt[@]}"
fi
exec tritonserver --model-repository="$ASEN_REPO" "$@"
