#!/usr/bin/env bash
# Installs alignlib and its test dependencies into a virtual environment, then runs every test:
# the Rust core's unit tests (no Python needed), then pytest (CPU only; GPU tests skip).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k packing`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
"$VENV/bin/python" -m pip install --quiet --editable ".[test]"
cargo test --quiet --package alignlib-core
PATH="$VENV/bin:$PATH" "$VENV/bin/python" -m pytest "$@"
