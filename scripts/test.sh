#!/usr/bin/env bash
# Set everything up, then lint, type-check and run the tests (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
