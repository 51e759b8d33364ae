#!/usr/bin/env bash
# The whole test suite: set up, lint, format check, the docs site, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# NVIDIA's perf_analyzer (in .venv-perf/) for the `asen bench serve` sweep test, which skips without it
bash scripts/install_perf_analyzer.sh >/dev/null \
  || echo "warning: could not install perf_analyzer; its tests will be skipped" >&2
# headless Chromium (Debian's package) for the search page test, which skips without it
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "warning: could not install chromium; its test will be skipped" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# the docs site: a broken link, an unknown page or a figure file that does not render fails
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
.venv/bin/python -m pytest "$@"
