#!/usr/bin/env bash
# The main job: install everything, train the fast CPU preset on Fashion-MNIST, export the model,
# serve it and classify a few real test images through gRPC.
# Re-running reuses what is done (finished stages are skipped, an interrupted one resumes,
# an existing export is kept).
#   scripts/quickstart.sh [--device cuda]   extra arguments go to scan-train
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
run=runs/fashion_mnist_cpu
.venv/bin/scan-train configs/fashion_mnist_cpu.yaml --output "$run" "$@"
repository=runs/model_repository
if [[ -d $repository/fashion_mnist/1 ]]; then
  echo "export: $repository/fashion_mnist/1 already exists, keeping it"
else
  .venv/bin/scan-export "$run" --repository "$repository" --model-name fashion_mnist --model-version 1
fi
.venv/bin/python scripts/classify_demo.py --repository "$repository" --model-name fashion_mnist --run "$run"
echo
echo "Everything is in $run: report.json, metrics.jsonl, and per stage the model and its pictures."
echo "The exported model (ONNX + Triton config + prototype index) is in $repository/fashion_mnist;"
echo "serve it with: .venv/bin/scan-serve --repository $repository --model-name fashion_mnist"
