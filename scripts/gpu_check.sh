#!/usr/bin/env bash
# Check the registry's GPU promises on real hardware and print the figures (tracked vs NVML
# per device, VRAM given back by unloads, warm p50 on the GPU vs an in-process call, a
# host-to-device copy vs a load from disk, exit with 0 MiB left). See scripts/gpu_check.py.
#   scripts/gpu_check.sh                       # on the first GPU, the BERT memory demo
#   scripts/gpu_check.sh --model langid-bert --requests 500 --json gpu-figures.json
# Without a GPU it prints "no GPU found: ..." and exits 0. NVML's per-process figures need
# nvidia-ml-py (pip install nvidia-ml-py); without it, torch's counters are used where they can.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=.venv/bin/python
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" scripts/gpu_check.py "$@"
