#!/usr/bin/env bash
# README command 1: set up, then run the whole pipeline on the embedded synthetic dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mrcnn demo "$@"
