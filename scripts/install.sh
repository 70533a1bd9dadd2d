#!/usr/bin/env bash
# Install everything into .venv at the repository root. Idempotent: a second run is quick.
#   scripts/install.sh          CPU machine: pinned CPU torch 2.13.0, faiss-cpu, onnxruntime
#   scripts/install.sh --gpu    CUDA machine: CUDA torch from PyPI, faiss-gpu, onnxruntime-gpu
# Environment: PYTHON (interpreter for the venv, default python3.11 or python3),
#              SCAN_SKIP_APT=1 to skip the Debian packages (Fashion-MNIST, Prometheus).
set -euo pipefail
cd "$(dirname "$0")/.."

flavor=cpu
[[ "${1:-}" == "--gpu" ]] && flavor=gpu

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

# Debian packages: the Fashion-MNIST files (evaluation labels included), and Prometheus (the tests
# scrape the gateway with a real one and validate its metrics with promtool). Optional elsewhere.
if [[ "${SCAN_SKIP_APT:-0}" != 1 ]] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  [[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || missing+=(dataset-fashion-mnist)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  if (( ${#missing[@]} )); then
    if [[ $(id -u) == 0 ]]; then
      say "apt-get install ${missing[*]}"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || say "apt-get failed: Fashion-MNIST will be downloaded on first use; the Prometheus tests will fail"
    else
      say "not root: skipping apt (${missing[*]})"
    fi
  fi
fi

python=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv with $python"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)

if [[ $flavor == cpu ]]; then
  # The CPU wheel; an unpinned torch would pull several GB of CUDA packages.
  .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__ != "2.13.0+cpu" and torch.__version__ != "2.13.0")' 2>/dev/null \
    || { say "installing torch 2.13.0 (CPU)"; "${pip[@]}" torch==2.13.0; }
else
  .venv/bin/python -c 'import torch, sys; sys.exit(not torch.version.cuda)' 2>/dev/null \
    || { say "installing CUDA torch"; "${pip[@]}" torch; }
fi

say "installing the project (.[train,$flavor,test])"
"${pip[@]}" -e ".[train,$flavor,test]"
.venv/bin/python -c 'import torch, faiss; print(f"[install] torch {torch.__version__}, faiss {faiss.__version__}, cuda {torch.cuda.is_available()}")'
