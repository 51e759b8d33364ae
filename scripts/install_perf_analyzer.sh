#!/usr/bin/env bash
# Install NVIDIA's perf_analyzer for `asen bench serve`, isolated from the project's .venv.
#
# The real binary last shipped in the tritonclient wheels (bin/perf_analyzer); 2.51.0 is the
# newest whose binary runs on glibc 2.35+ (Debian 12, Ubuntu 22.04): from 2.52 on it needs
# glibc 2.38. It links Debian's libb64 and the CUDA 12 runtime library (CUDA shared memory;
# no GPU is needed otherwise), which come from Debian's libb64-0d (unpacked into the tool's
# folder, no root needed; apt-get install where it cannot be downloaded) and the
# nvidia-cuda-runtime-cu12 wheel. Result: $DEST/perf_analyzer, a wrapper that sets
# LD_LIBRARY_PATH and runs the binary; `asen bench serve` finds it there (or set
# ASEN_PERF_ANALYZER, or put NVIDIA's own perf_analyzer on PATH). Idempotent.
#
#   bash scripts/install_perf_analyzer.sh            # into .venv-perf/
#   PERF_ANALYZER_HOME=/opt/perf bash scripts/install_perf_analyzer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${PERF_ANALYZER_HOME:-.venv-perf}"
PYTHON="${PYTHON:-python3}"
TRITONCLIENT=2.51.0
CUDA_RUNTIME=12.9.79

if [ "$(uname -m)" != x86_64 ]; then
  echo "install_perf_analyzer: the tritonclient wheels ship perf_analyzer for x86_64 only" >&2
  exit 1
fi
wrapper="$DEST/perf_analyzer"
if [ -x "$wrapper" ] && "$wrapper" --version >/dev/null 2>&1; then
  exit 0
fi
if [ ! -x "$DEST/bin/python" ]; then
  "$PYTHON" -m venv "$DEST"
fi
"$DEST/bin/python" -m pip install --quiet --no-deps \
  "tritonclient==$TRITONCLIENT" "nvidia-cuda-runtime-cu12==$CUDA_RUNTIME"
site=$("$DEST/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
libs=("$site/nvidia/cuda_runtime/lib")

if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
  deb_dir=$(mktemp -d)
  trap 'rm -rf "$deb_dir"' EXIT
  if (cd "$deb_dir" && apt-get download libb64-0d >/dev/null 2>&1); then
    dpkg-deb -x "$deb_dir"/libb64-0d_*.deb "$DEST/libb64"
    libs+=("$(dirname "$(find "$(cd "$DEST/libb64" && pwd)" -name 'libb64.so.0d' | head -1)")")
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d; } \
      >/dev/null
  else
    echo "install_perf_analyzer: libb64.so.0d is missing: apt-get install libb64-0d" >&2
    exit 1
  fi
fi

abs_libs=()
for lib in "${libs[@]}"; do abs_libs+=("$(cd "$lib" && pwd)"); done
binary="$(cd "$DEST/bin" && pwd)/perf_analyzer"
lib_path=$(IFS=:; echo "${abs_libs[*]}")
cat >"$wrapper.tmp" <<EOF
#!/bin/sh
# perf_analyzer from tritonclient $TRITONCLIENT (written by scripts/install_perf_analyzer.sh)
LD_LIBRARY_PATH="$lib_path\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$binary" "\$@"
EOF
chmod +x "$wrapper.tmp"
mv "$wrapper.tmp" "$wrapper"
"$wrapper" --version >/dev/null 2>&1 || "$wrapper" --help >/dev/null 2>&1 || {
  echo "install_perf_analyzer: $wrapper does not run:" >&2
  "$wrapper" --version >&2 || true
  exit 1
}
echo "perf_analyzer (tritonclient $TRITONCLIENT): $wrapper"
