#!/usr/bin/env bash
# README command 2: set up, then run the test suite against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pytest -q "$@"
