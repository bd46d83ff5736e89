#!/usr/bin/env bash
# What this project checks on a GPU machine (any machine with a CUDA GPU, nvcc, cmake, ninja and a python3 that has
# torch + torchvision): build the native kernels for the card, run the `cuda`-marked tests, time the training step
# and the kernels against their torch / torchvision peers. Logs and result JSON go to $OUT (default
# benchmarks/results/gpu).
#
#   bash benchmarks/gpu_session.sh [build] [roi] [train] [tests] [kernels] [profile] [diag] [data] [infer]
#
# No argument: `build roi train profile`, the one call that measures the training goal (AMP + channels-last training
# against torchvision, docs/benchmarks.md) and, with the time the eager settings leave, profiles a bf16 step (what to
# cut next if the goal is missed), sized for a lease of 15 device minutes in all (a machine's start takes 1-2):
#   call 1  MRCNN_COMMIT=<sha> bash benchmarks/gpu_session.sh                 (timeout_s 600; at most 9 min)
#   call 2  MRCNN_COMMIT=<sha> bash benchmarks/gpu_session.sh build tests kernels   (only if time is left; carry .whl)
# Every stage and every training setting first checks the time left of GPU_SESSION_BUDGET_S (default 540 s from
# the script's start) against its estimate and is skipped with a line saying so; each timed run is also cut at the
# time left, so the call ends inside its limit and what was measured so far is under $OUT.
#
# Stages:
#   build    CMake + Ninja of the kernels for sm 90 (~15 s), and of the TensorRT plugin library and its C++ driver when
#            build/trt-headers is carried (name it in the device call's carry)
#   roi      test_cuda_roi_align_equals_cpu and test_cuda_roi_align_nhwc_equals_cpu alone (~30 s): when the first
#            passes, `train` also times ours with the native multi-level CUDA RoIAlign (MRCNN_CUDA_ROI_ALIGN) and
#            `tests` reruns the model tests with it; when the second passes, its NHWC kernels are on for what follows
#            (MRCNN_CUDA_ROI_ALIGN_NHWC=1: channels-last training reads the maps and writes their gradients NHWC)
#   train    benchmarks/train_throughput.py, batch 4, 60 interleaved steps per model, in this order: bf16 and fp16
#            + channels-last at COCO's 800x1344, then at 800x800 (~60 s each), then bf16 800x1344 with
#            `--compile both` (compiling takes the warm-up steps; ~4 min allowed), then fp32 800x800
#   tests    every `cuda`-marked test (needs pycocotools: carry its wheel, below), the plugin driver's enqueue among
#            them (tests/deploy/test_trt_plugins.py)
#   kernels  benchmarks/kernels.py --device cuda (MatchProposals vs torch; the NHWC RoIAlign backward vs the NCHW
#            one)
#   infer    benchmarks/infer_throughput.py --device cuda: batch 1 and 8 x autocast bf16 and fp16, ours (plain,
#            the inference levers, the network as a CUDA graph) vs torchvision eager (~60 s each):
#            `MRCNN_COMMIT=<sha> bash benchmarks/gpu_session.sh build infer` (timeout_s 600)
#   serve    `mrcnn serve` on CUDA and the concurrency sweep against offline (benchmarks/serve_throughput.py --device
#            cuda; ~90 s): needs the `serve` extra, whose wheels (nvidia-pytriton 55 MB, tritonclient, numpy<2, ...)
#            fill a call's carry: carry .whl-serve alone, in its own call (`build serve`), made here with
#              python3 -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_35_x86_64 \
#                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl-serve \
#                nvidia-pytriton "tritonclient[http,grpc]" "numpy<2" pycocotools
#            they go into a venv over the image's packages (build/serve-venv, kept by a warm machine), whose numpy 1.x
#            Triton's Python backend needs
#   profile  op tables of a bf16 800x1344 step (in the default call, last, when >= 90 s are left)
#   diag, data   optional: cudaMalloc counts under two allocator settings; the
#            trainer's data loader with 0 and 4 workers on the host's cores
#
# The GPU image has its own PyTorch/torchvision (not this project's pinned ones) and no registry. `tests` needs
# pycocotools; its wheel travels in .whl/ (ignored by git; name `.whl` in the device call's carry). Here, once:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pycocotools
# MRCNN_COMMIT names the commit in the result JSON (the copy there has no .git). At most 8 files come back from
# $OUT: session.log, pytest_cuda.log and at most 6 JSON per call.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
stages=${*:-build roi train profile}
has() { [[ " $stages " == *" $1 "* ]]; }
BUDGET=${GPU_SESSION_BUDGET_S:-540}
left() { echo $((BUDGET - SECONDS)); }   # SECONDS counts from the script's start
fits() {  # fits NEED_S WHAT: enough time left for WHAT, or a line saying it is skipped
  if (($(left) < $1)); then
    echo "SKIPPED (time): $2 needs ~$1 s, $(left) s left of GPU_SESSION_BUDGET_S=$BUDGET"
    return 1
  fi
}
bounded() {  # run a command, stopped (SIGINT, then SIGKILL) when the budget is spent
  local t; t=$(left); ((t > 0)) || t=1
  timeout --signal=INT --kill-after=10 "$t" "$@"
}

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
# The checkout imports as the package (mrcnn/export and mrcnn/cli are symlinks), on PYTHONPATH: the device image has
# no registry for `pip install`. The native library is the one `build` makes (MRCNN_KERNELS_LIB).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export MRCNN_KERNELS_LIB=${MRCNN_KERNELS_LIB:-$PWD/build/gpu/plugins/kernels/libmrcnn_kernels.so}
export MRCNN_COMMIT=${MRCNN_COMMIT:-unknown}
echo "stages: $stages | budget $BUDGET s | commit $MRCNN_COMMIT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

if has build; then
  # the TensorRT plugin library and its driver too when TensorRT headers travel with the call (carry build/trt-headers,
  # which scripts/setup.sh unpacks here)
  hdr=$PWD/build/trt-headers/kernel_lens/include/tensorrt
  { cmake -S . -B build/gpu -G Ninja -DMRCNN_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
      $( [[ -f $hdr/NvInferRuntime.h ]] && echo "-DTensorRT_INCLUDE_DIR=$hdr" ) \
      && cmake --build build/gpu; } >/tmp/build.log 2>&1 || { tail -40 /tmp/build.log; exit 1; }
  grep "mrcnn:" /tmp/build.log || true
  echo "build: $SECONDS s since start"
fi
[[ -f build/gpu/plugins/tensorrt/libmrcnn_trt_plugins.so ]] && export MRCNN_TRT_PLUGINS=$PWD/build/gpu/plugins/tensorrt/libmrcnn_trt_plugins.so
python3 -m mrcnn info

# Two CUDA kernels are used only once their test has passed on this card; the verdicts are kept in the build folder,
# which a warm device machine keeps between calls ($OUT starts empty):
#   the native multi-level RoIAlign (test_cuda_roi_align_equals_cpu): then `train`, `tests`, `kernels` and `profile`
#     use it too;
#   its NHWC kernels (test_cuda_roi_align_nhwc_equals_cpu; MRCNN_CUDA_ROI_ALIGN_NHWC=1): then
#     `train`, `tests` and `profile` run with them on.
ROI_OK=build/gpu/cuda_roi_align.passed
NHWC_OK=build/gpu/cuda_roi_align_nhwc.passed
native_roi_ok() { [[ -f $ROI_OK ]]; }
verdict() {  # verdict TEST FILE WHAT LOG: FILE exists afterwards iff TEST passed (and never failed) in LOG
  rm -f "$2"
  if grep -q "$1.*PASSED" "$4" && ! grep -q "$1.*FAILED" "$4"; then mkdir -p build/gpu && touch "$2"; fi
  echo "$3: $([[ -f $2 ]] && echo 'equal to the CPU kernel (used)' || echo 'NOT verified (not used)')"
}
verdicts() {  # verdicts LOG
  verdict test_cuda_roi_align_equals_cpu "$ROI_OK" "native CUDA RoIAlign" "$1"
  verdict test_cuda_roi_align_nhwc_equals_cpu "$NHWC_OK" "NHWC CUDA RoIAlign" "$1"
  export MRCNN_CUDA_ROI_ALIGN_NHWC=$([[ -f $NHWC_OK ]] && echo 1 || echo 0)
}
[[ -f $NHWC_OK ]] && export MRCNN_CUDA_ROI_ALIGN_NHWC=1
summary() { grep -E "^===|PASSED|FAILED|ERROR|SKIPPED|passed|failed|error" "$1" | tail -"$2"; }

if has roi && ! has tests && fits 60 "roi"; then
  MRCNN_CUDA_ROI_ALIGN_NHWC=0 bounded python3 -m pytest -p no:cacheprovider -v -s tests/native/test_kernels.py \
    -k "test_cuda_roi_align_equals_cpu or test_cuda_roi_align_nhwc_equals_cpu" >"$OUT/pytest_cuda.log" 2>&1
  summary "$OUT/pytest_cuda.log" 24
  verdicts "$OUT/pytest_cuda.log"
fi

if has train; then  # batch 4 (the seed's per-GPU batch); the median step counts, with its 95% interval
  # SPEC|TAG|SECONDS NEEDED; the AMP + channels-last settings first (the goal), COCO's shape first
  for row in "--amp bf16 --channels-last --width 1344|ampbf16channelslastwidth1344|60" \
             "--amp fp16 --channels-last --width 1344|ampfp16channelslastwidth1344|60" \
             "--amp bf16 --channels-last|ampbf16channelslast|60" \
             "--amp fp16 --channels-last|ampfp16channelslast|60" \
             "--amp bf16 --channels-last --width 1344 --compile both|ampbf16channelslastwidth1344compile|240" \
             "--amp off|ampoff|45"; do
    IFS='|' read -r spec tag need <<<"$row"
    fits "$need" "train $spec" || continue
    roi=$(native_roi_ok && echo both || echo off)  # both: ours timed with and without the native RoIAlign
    echo "=== train $spec (native RoIAlign: $roi, NHWC: ${MRCNN_CUDA_ROI_ALIGN_NHWC:-0})"
    bounded python3 benchmarks/train_throughput.py --device cuda --size 800 --batch 4 --iters 60 --warmup 5 \
      --native-roi-align "$roi" $spec --json "$OUT/train_throughput-$tag.json" 2>&1 | grep -v "^saved"
    echo "($SECONDS s since start)"
  done
fi

if has tests && fits 240 "tests"; then  # -s: the tests print what they measured
  MRCNN_CUDA_ROI_ALIGN=0 MRCNN_CUDA_ROI_ALIGN_NHWC=0 bounded python3 -m pytest -p no:cacheprovider -m cuda -v -s \
    tests/native/test_kernels.py tests/model/test_equivalence.py tests/training/test_train.py \
    tests/deploy/test_trt_plugins.py >"$OUT/pytest_cuda.log" 2>&1
  verdicts "$OUT/pytest_cuda.log"
  if native_roi_ok && fits 120 "tests with MRCNN_CUDA_ROI_ALIGN=1"; then  # the model's tests, native RoIAlign
    echo "=== MRCNN_CUDA_ROI_ALIGN=1 MRCNN_CUDA_ROI_ALIGN_NHWC=$MRCNN_CUDA_ROI_ALIGN_NHWC" >>"$OUT/pytest_cuda.log"
    MRCNN_CUDA_ROI_ALIGN=1 bounded python3 -m pytest -p no:cacheprovider -m cuda -v -s tests/model/test_equivalence.py \
      tests/training/test_train.py >>"$OUT/pytest_cuda.log" 2>&1
  fi
  summary "$OUT/pytest_cuda.log" 60
fi

if has infer; then  # inference at 800x1333 vs torchvision eager, batch 1 and 8, AMP, a CUDA graph
  for spec in "1 bf16" "1 fp16" "8 bf16" "8 fp16"; do
    set -- $spec
    fits 75 "infer batch $1 $2" || continue
    bounded python3 benchmarks/infer_throughput.py --device cuda --batch "$1" --amp "$2" --iters 30 --warmup 5 \
      --out "$OUT/infer_throughput-cuda-b$1-$2.json"
  done
fi

if has kernels && fits 120 "kernels"; then
  MRCNN_CUDA_ROI_ALIGN=$(native_roi_ok && echo 1 || echo 0) \
    bounded python3 benchmarks/kernels.py --device cuda --iters 50 --json "$OUT/kernels-cuda.json"
fi

if has serve && fits 90 "serve"; then  # the server on the GPU, the sweep against offline (acceptance of docs/serving.md)
  if ls .whl-serve/*.whl >/dev/null 2>&1; then
    python3 -m venv --system-site-packages build/serve-venv \
      && build/serve-venv/bin/python -m pip install -q --no-index --find-links .whl-serve nvidia-pytriton \
        "tritonclient[http,grpc]" "numpy<2" pycocotools || exit 1
  fi
  if [[ -x build/serve-venv/bin/python ]]; then
    python3 -m mrcnn data synth /tmp/serve-data --train 4 --val 16 >/dev/null
    python3 - <<'PY'  # a shapes-tiny checkpoint with random weights: the serving path, not the model, is measured
import torch
from mrcnn.config import get_config
from mrcnn.model import build_model
from mrcnn.model.checkpoint import save_checkpoint
cfg = get_config("shapes-tiny"); torch.manual_seed(0)
save_checkpoint("/tmp/serve.pt", {"config": cfg.to_dict(), "class_names": ["circle", "square", "triangle", "star",
                "ellipse"], "model": build_model(cfg.model).state_dict()})
PY
    bounded build/serve-venv/bin/python benchmarks/serve_throughput.py --device cuda --artifact /tmp/serve.pt \
      --data /tmp/serve-data --json "$OUT/serve_throughput-cuda.json"
  else
    echo "SKIPPED: serve needs the serve extra's wheels (carry .whl-serve, header above)"
  fi
fi

if has profile && fits 90 "profile"; then
  bounded python3 benchmarks/train_throughput.py --device cuda --size 800 --width 1344 --batch 4 --iters 5 --warmup 3 \
    --amp bf16 --channels-last --native-roi-align "$(native_roi_ok && echo on || echo off)" --no-save \
    --profile /tmp/prof 2>&1 | tail -5
  for f in /tmp/prof-*.txt; do echo "=== $f"; cat "$f"; done >"$OUT/profile.txt"
fi

if has data && fits 90 "data"; then  # what the loader delivers on a GPU host's cores
  bounded python3 benchmarks/data_loading.py --workers 4 --batches 24 --json "$OUT/data_loading-gpu-host.json" 2>&1 \
    | grep -v "^saved"
fi

if has diag && fits 120 "diag"; then  # host-bound, or stalled by the allocator? cudaMalloc counts, two settings
  for conf in "" "expandable_segments:True"; do
    echo "PYTORCH_CUDA_ALLOC_CONF=$conf"
    PYTORCH_CUDA_ALLOC_CONF=$conf bounded python3 benchmarks/train_throughput.py --device cuda --size 800 --width 1344 \
      --batch 4 --iters 25 --warmup 5 --amp bf16 --channels-last --no-save 2>&1 | tail -6
  done
fi
echo "done: $SECONDS s"
