#!/usr/bin/env bash
# README command 2: set up, lint, build the native development tree, then run the test suite against the installed
# package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# lint: ruff's formatter and linter (pycodestyle, pyflakes, import order, bugbear, pyupgrade, simplify, no private
# imports across modules), clang-format on the C++ / CUDA sources, then the import layers of docs/design.md §2
.venv/bin/ruff format --check --quiet .
.venv/bin/ruff check --quiet .
git ls-files -z '*.h' '*.cpp' '*.cu' '*.cuh' | xargs -0 .venv/bin/clang-format --dry-run -Werror
.venv/bin/lint-imports --no-cache | tail -n 4
# the native development tree (build/dev: the plugin driver the tests call), with CMake's default generator; the
# wheel's build above (scikit-build-core) uses Ninja, so both generators build in every run. One CUDA architecture:
# the tree is for the driver, which runs no kernel without a GPU (the wheel has every architecture)
hdr=$(bash scripts/tensorrt-headers.sh)
cmake -S . -B build/dev -DCMAKE_CUDA_ARCHITECTURES=80 ${hdr:+-DTensorRT_INCLUDE_DIR="$hdr"} > build/dev-configure.log \
  || { cat build/dev-configure.log; exit 1; }
cmake --build build/dev -j "$(nproc)" --target all > build/dev-build.log || { tail -n 40 build/dev-build.log; exit 1; }
# two pytest-xdist workers, each test file on one of them (its module fixtures built once); arguments after these
# override them (`-n 0`: one process; `-m "not slow"`: the fast path of CONTRIBUTING.md)
exec .venv/bin/pytest -q -n 2 --dist loadfile "$@"
