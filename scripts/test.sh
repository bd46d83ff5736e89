#!/usr/bin/env bash
# README command 2: set up, lint, then run the test suite against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# lint: ruff (pycodestyle, pyflakes, import order, no private imports across modules), then the import layers of
# docs/design.md §2 (lint-imports reads the installed package, where mrcnn.cli and mrcnn.export exist: run it from
# outside the checkout)
.venv/bin/ruff check --quiet .
repo=$PWD
(cd "${TMPDIR:-/tmp}" && "$repo/.venv/bin/lint-imports" --no-cache "$repo/pyproject.toml" | tail -n 4)
# two pytest-xdist workers, each test file on one of them (its module fixtures built once); arguments after these
# override them (`-n 0`: one process)
exec .venv/bin/pytest -q -n 2 --dist loadfile "$@"
