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
# TensorRT headers for the plugin library (plugins/tensorrt): $TensorRT_INCLUDE_DIR when set (a TensorRT install),
# else TensorRT 10.14.1's public headers as the pinned wheel kernel-lens 2.0.1 ships them. That wheel is never
# installed or imported: its headers are unpacked into build/trt-headers and checked against
# scripts/tensorrt-headers.sha256 before use. Without headers the plugin library is skipped (one CMake line).
if [ -z "${TensorRT_INCLUDE_DIR:-}" ] && [ "${MRCNN_WITH_TENSORRT:-AUTO}" != "OFF" ]; then
  hdr=build/trt-headers/kernel_lens/include/tensorrt
  if [ ! -f "$hdr/NvInferRuntime.h" ]; then
    .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      kernel-lens==2.0.1 -d build/trt-headers/wheel 2>&1 | { grep -v "is ignored: it is neither" || true; }
    .venv/bin/python -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith('kernel_lens/include/tensorrt/')])" \
      build/trt-headers/wheel/kernel_lens-2.0.1-py3-none-any.whl build/trt-headers || true
  fi
  if (cd "$hdr" 2>/dev/null && sha256sum --quiet --strict -c "$OLDPWD/scripts/tensorrt-headers.sha256"); then
    TensorRT_INCLUDE_DIR=$PWD/$hdr
  else
    echo "TensorRT headers: none verified (kernel-lens 2.0.1 missing or changed); the plugin library is skipped"
  fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check ".[${MRCNN_EXTRAS:-test,onnx,tensorrt-rtx}]" \
  ${TensorRT_INCLUDE_DIR:+-C cmake.define.TensorRT_INCLUDE_DIR="$TensorRT_INCLUDE_DIR"} 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
# the installed package, not the checkout beside it (-c puts the current directory first on sys.path)
.venv/bin/python -c "import sys; sys.path.pop(0); import mrcnn, mrcnn.cli.main, mrcnn.native as n; \
from mrcnn.deploy import trt_plugins as p; lib = p.library_path(); \
print('mrcnn', mrcnn.__version__, '| native:', n.native_status(), '| TensorRT plugins:', \
p.build_info(lib) if lib else 'not built')"
