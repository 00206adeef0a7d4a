#!/usr/bin/env bash
# Set everything up, then serve the default models.yaml on 127.0.0.1:8000 (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/model-registry serve --config models.yaml "$@"
