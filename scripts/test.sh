#!/usr/bin/env bash
# README command 2: set up, then run the test suite against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two pytest-xdist workers, each test file on one of them (its module fixtures built once); arguments after these
# override them (`-n 0`: one process)
exec .venv/bin/pytest -q -n 2 --dist loadfile "$@"
