#!/usr/bin/env bash
# Create .venv (if missing) and install mrcnn with its test, ONNX, TensorRT-RTX, serve, OpenVINO and INT8 extras
# (MRCNN_EXTRAS chooses others). Idempotent, and quick when nothing changed: the install is skipped while the sources,
# the extras and the TensorRT headers are those of the last install (.venv/.mrcnn-installed). Used by both README
# commands.
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
extras=${MRCNN_EXTRAS:-test,onnx,tensorrt-rtx,serve,openvino,int8}
TensorRT_INCLUDE_DIR=$(bash scripts/tensorrt-headers.sh)
stamp=$( { echo "$extras $TensorRT_INCLUDE_DIR"; git ls-files -co --exclude-standard -z -- pyproject.toml \
  CMakeLists.txt mrcnn export cli plugins | xargs -0 sha256sum 2>/dev/null || true; } | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.mrcnn-installed 2>/dev/null)" != "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check ".[$extras]" \
    ${TensorRT_INCLUDE_DIR:+-C cmake.define.TensorRT_INCLUDE_DIR="$TensorRT_INCLUDE_DIR"} 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "$stamp" > .venv/.mrcnn-installed
fi
# the installed package (-c puts the current directory first on sys.path: take it off)
.venv/bin/python -c "import sys; sys.path.pop(0); import mrcnn, mrcnn.cli.main, mrcnn.native as n; \
from mrcnn.deploy import trt_plugins as p; lib = p.library_path(); \
print('mrcnn', mrcnn.__version__, '| native:', n.native_status(), '| TensorRT plugins:', \
p.build_info(lib) if lib else 'not built')"
