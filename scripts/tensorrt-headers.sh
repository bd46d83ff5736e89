#!/usr/bin/env bash
# Prints the folder of the TensorRT headers the native build compiles the plugin library against, or nothing.
# $TensorRT_INCLUDE_DIR when set (a TensorRT install); else TensorRT 10.14.1's public headers as the pinned PyPI wheel
# kernel-lens 2.0.1 ships them: that wheel is never installed or imported, its headers are unpacked into
# build/trt-headers and checked against scripts/tensorrt-headers.sha256 before use. MRCNN_WITH_TENSORRT=OFF: none.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${TensorRT_INCLUDE_DIR:-}" ]; then echo "$TensorRT_INCLUDE_DIR"; exit 0; fi
[ "${MRCNN_WITH_TENSORRT:-AUTO}" = "OFF" ] && exit 0
hdr=build/trt-headers/kernel_lens/include/tensorrt
if [ ! -f "$hdr/NvInferRuntime.h" ]; then
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    kernel-lens==2.0.1 -d build/trt-headers/wheel 2>&1 | { grep -v "is ignored: it is neither" || true; } >&2
  .venv/bin/python -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith('kernel_lens/include/tensorrt/')])" \
    build/trt-headers/wheel/kernel_lens-2.0.1-py3-none-any.whl build/trt-headers >&2 || true
fi
if (cd "$hdr" 2>/dev/null && sha256sum --quiet --strict -c "$OLDPWD/scripts/tensorrt-headers.sha256" >&2); then
  echo "$PWD/$hdr"
else
  echo "TensorRT headers: none verified (kernel-lens 2.0.1 missing or changed); the plugin library is skipped" >&2
fi
