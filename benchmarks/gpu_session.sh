#!/usr/bin/env bash
# Every GPU check of the training engine in ONE call to the lent accelerator machine (a session has
# 15 minutes of device time, start-up included), each step with its own time limit, results under $OUT:
#   1. the CUDA-only tests (augmentation on the device, no host syncs in the epoch loops, torch kNN);
#   2. benchmarks/pretext_throughput.py at 1x28x28, 3x32x32 and 3x96x96 (model-only bound, ours,
#      kornia, per-image workers);
#   3. benchmarks/scan_cached_features.py (SCAN on cached features, to compare with 2 CPU cores);
#   4. configs/fashion_mnist_gpu.yaml through all four stages, with its per-stage time table.
#
# Here, once:   ../shared/tools/device_payload.sh        (wheels + Fashion-MNIST into .device/)
# There:        device run, carry [".device"]:  bash benchmarks/gpu_session.sh
# Dry run here: GPU_SESSION_DRY=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_session.sh   (CPU, tiny settings)
# GPU_SESSION_SECONDS (default 440) bounds the whole script; a step gets what is left of it.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu_session}
mkdir -p "$out"
out=$(cd "$out" && pwd)
log=$out/session.log
budget=${GPU_SESSION_SECONDS:-440}
start=$(date +%s)

if [ "${GPU_SESSION_DRY:-0}" = 1 ]; then
  device=cpu py=.venv/bin/python
  bench=(--images 1000 --steps 1 --rounds 1 --workers 2 --backbone convnet --width 16)
  scan=(--images 4000 --epochs 1)
  preset=(--set pretext.epochs=1 --set data.train_subset=1500 --set data.test_subset=500 --set scan.epochs=1
          --set selflabel.epochs=1 --set model.backbone=convnet --set model.width=16)
else
  device=cuda py=python3
  bench=(--workers 16)
  scan=()
  preset=()
  # shellcheck disable=SC1091
  source .device/setup.sh >>"$log" 2>&1  # not through a pipe: that would source it in a subshell
fi

step() {  # step NAME LIMIT_S COMMAND...: run with a limit that fits the time left; log everything
  local name=$1 limit=$2
  shift 2
  local left=$((budget - ($(date +%s) - start)))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    echo "=== $name: skipped, $left s of the budget left" | tee -a "$log"
    return
  fi
  echo "=== $name (limit $limit s): $*" | tee -a "$log"
  local t0
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >>"$log" 2>&1
  echo "=== $name: exit $? after $(($(date +%s) - t0)) s" | tee -a "$log"
}

step gpu_tests 90 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/test_augment.py tests/stages \
  tests/test_pretext.py tests/test_neighbors.py tests/test_embed.py
step pretext_throughput 150 "$py" benchmarks/pretext_throughput.py --device "$device" "${bench[@]}" \
  --out "$out/pretext_throughput_$device.json"
step scan_cached_features 40 "$py" benchmarks/scan_cached_features.py --device "$device" "${scan[@]}" \
  --out "$out/scan_cached_features_$device.json"
rm -rf runs/gpu_preset
step preset 600 "$py" -m trainer.cli configs/fashion_mnist_gpu.yaml --output runs/gpu_preset --device "$device" \
  --no-progress "${preset[@]}"
# the run's small files (report, config, metrics, pictures), not its checkpoints and arrays
if [ -d runs/gpu_preset ]; then
  (cd runs && find gpu_preset -type f ! -name '*.pt' ! -name '*.npy' ! -name '*.faiss' -print0 |
    tar -czf "$out/gpu_preset.tar.gz" --null -T -)
fi
echo "=== done after $(($(date +%s) - start)) s" | tee -a "$log"
