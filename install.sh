#!/usr/bin/env bash
# Install SSS's dependencies into the current Python environment.
#   bash install.sh          runtime dependencies
#   bash install.sh --dev    plus the test dependencies
# torch must be importable before `sam2` is built (sam2 ships only an sdist whose build imports torch),
# so the order below matters. SAM2_BUILD_CUDA=0 (the default here) skips sam2's optional CUDA
# extension, which no training or evaluation path of this repository uses.
set -euo pipefail
PY=${PYTHON:-python}
cd "$(dirname "$0")"
"$PY" -m pip install "torch>=2.5.1" "torchvision>=0.20.1"
if ! "$PY" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=${SAM2_BUILD_CUDA:-0} "$PY" -m pip install --no-build-isolation "sam2==1.1.0"
fi
"$PY" -m pip install -r requirements.txt
if [[ "${1:-}" == "--dev" ]]; then
  "$PY" -m pip install -r requirements-dev.txt
fi
