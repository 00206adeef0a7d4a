#!/usr/bin/env bash
# Run the benchmark suite: every scenario against a baseline measured in the same run.
# Prints a table; writes BENCHMARKS.json and BENCHMARKS.md in the repository root.
#   scripts/bench.sh                       # the full suite (~10 minutes on 2 cores)
#   scripts/bench.sh --quick               # fewer repetitions, shorter wrk runs
#   scripts/bench.sh --only warm,stampede  # some scenarios (see --help)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/model-registry ]; then
    echo "bench: .venv is missing; run scripts/setup.sh first" >&2
    exit 2
fi

# wrk is the HTTP load generator of the warm, throughput and isolation scenarios.
if ! command -v wrk >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "bench: installing wrk (apt-get install -y wrk)" >&2
        apt-get install -y -qq wrk >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; } \
            || true
    elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        echo "bench: installing wrk (sudo apt-get install -y wrk)" >&2
        sudo -n apt-get install -y -qq wrk >/dev/null 2>&1 || true
    fi
    if ! command -v wrk >/dev/null 2>&1; then
        echo "bench: wrk is not installed and could not be installed here (needs apt-get as" \
            "root or password-less sudo); the warm, throughput and isolation scenarios will be" \
            "skipped. Install it with: apt-get install -y wrk" >&2
    fi
fi

# The baselines in the bench extras (pyproject.toml: LitServe for the litserve scenario), held
# to constraints.txt like every other install; they change none of the project's versions.
missing_extras=$(.venv/bin/python - <<'PY'
import importlib.metadata as metadata
import tomllib

with open("pyproject.toml", "rb") as f:
    wanted = tomllib.load(f)["project"]["optional-dependencies"]["bench"]
for requirement in wanted:  # each pinned exactly: name==version
    name, version = requirement.split("==")
    try:
        if metadata.version(name) == version:
            continue
    except metadata.PackageNotFoundError:
        pass
    print(requirement)
PY
)
if [ -n "$missing_extras" ]; then
    echo "bench: installing the bench extras into .venv:" $missing_extras >&2
    # shellcheck disable=SC2086  # one argument per requirement
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
        $missing_extras 2> >(grep -v "is ignored" >&2) \
        || echo "bench: could not install the bench extras; the litserve scenario will fail" >&2
fi

export BENCH_COMMAND="scripts/bench.sh${*:+ $*}"
exec .venv/bin/python -m bench "$@"
