#!/usr/bin/env bash
# Installs alignlib into a virtual environment and runs the main job on the embedded default:
# a tiny random-init model, the shipped sample data and tokenizer, SFT then DPO, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
"$VENV/bin/python" -m pip install --quiet .
PATH="$VENV/bin:$PATH" "$VENV/bin/alignlib" demo "$@"
