#!/usr/bin/env bash
# Create .venv (if missing) and install mrcnn with its test, ONNX and TensorRT-RTX extras (MRCNN_EXTRAS chooses
# others).
# Idempotent; used by both README commands.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
fi
# torch/torchvision from PyPI (CUDA builds; they run on CPU too). The build backend (scikit-build-core) runs CMake.
# (pipefail: a failed install stops here; the filter only drops this machine's pip-config noise)
# MRCNN_EXTRAS: the extras to install (tensorrt-rtx, ~260 MB: its builder makes engines on a CPU-only machine)
.venv/bin/python -m pip install -q --disable-pip-version-check ".[${MRCNN_EXTRAS:-test,onnx,tensorrt-rtx}]" 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
# the installed package, not the checkout beside it (-c puts the current directory first on sys.path)
.venv/bin/python -c "import sys; sys.path.pop(0); import mrcnn, mrcnn.cli.main, mrcnn.native as n; \
print('mrcnn', mrcnn.__version__, '| native:', n.native_status())"
