#!/usr/bin/env bash
# Export the mounted checkpoint into $ASEN_REPO once (ONNX graphs: this image's PyTorch is
# the CPU wheel, see docker/Dockerfile), unless a repository is there already (KServe's
# storage initializer, or plans built for this image's TensorRT), then serve the repository
# with this container's tritonserver, passing on the container's arguments.
set -euo pipefail
if [ ! -f "$ASEN_REPO/asen/config.pbtxt" ]; then
  if [ ! -f "$ASEN_CHECKPOINT" ]; then
    echo "asen: no model repository in $ASEN_REPO and no checkpoint at $ASEN_CHECKPOINT" >&2
    exit 1
  fi
  asen export "$ASEN_CHECKPOINT" --repo "$ASEN_REPO"
fi
exec tritonserver --model-repository="$ASEN_REPO" "$@"
