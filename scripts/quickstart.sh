#!/usr/bin/env bash
# The main job: install everything, then train the fast CPU preset on Fashion-MNIST.
# Re-running reuses what is done (finished stages are skipped, an interrupted one resumes).
#   scripts/quickstart.sh [--device cuda]   extra arguments go to scan-train
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
run=runs/fashion_mnist_cpu
.venv/bin/scan-train configs/fashion_mnist_cpu.yaml --output "$run" "$@"
echo
echo "Everything is in $run: report.json, metrics.jsonl, and per stage the model and its pictures."
