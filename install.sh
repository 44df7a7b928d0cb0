#!/usr/bin/env bash
# Install SSS's dependencies into the current Python environment.
#   bash install.sh          runtime dependencies (torch from the default pip index: the CUDA build on Linux)
#   bash install.sh --cpu    the same, with the CPU build of torch/torchvision (no nvidia-* wheels)
#   bash install.sh --dev    plus the test dependencies (combinable with --cpu, in any order)
# torch must be importable before `sam2` is built (sam2 ships only an sdist whose build imports torch),
# so the order below matters. SAM2_BUILD_CUDA=0 (the default here) skips sam2's optional CUDA
# extension, which no training or evaluation path of this repository uses.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash install.sh [--cpu] [--dev] [--help]
Installs SSS's dependencies into the current Python environment ($PYTHON, default: python);
use a virtual environment: python -m venv .venv && source .venv/bin/activate
  (no flag)  torch and torchvision from the default pip index (the CUDA build on Linux), then sam2
             and requirements.txt
  --cpu      the CPU build of torch and torchvision, from https://download.pytorch.org/whl/cpu, before
             sam2 and the rest: for a machine without a GPU (no nvidia-* wheels)
  --dev      also the test dependencies (requirements-dev.txt)
  --help     this text
EOF
}

CPU=0
DEV=0
for arg in "$@"; do
  case "$arg" in
    --cpu) CPU=1 ;;
    --dev) DEV=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (expected --cpu, --dev or --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python}
cd "$(dirname "$0")"
if [[ $CPU == 1 ]]; then
  "$PY" -m pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.5.1" "torchvision>=0.20.1"
else
  "$PY" -m pip install "torch>=2.5.1" "torchvision>=0.20.1"
fi
if ! "$PY" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=${SAM2_BUILD_CUDA:-0} "$PY" -m pip install --no-build-isolation "sam2==1.1.0"
fi
"$PY" -m pip install -r requirements.txt
if [[ $DEV == 1 ]]; then
  "$PY" -m pip install -r requirements-dev.txt
fi
