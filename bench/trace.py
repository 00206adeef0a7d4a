"""The trace benchmark (scenario `trace`): eviction under skewed traffic.

    scripts/bench.sh --only trace --no-write       the rows of the suite
    .venv/bin/python -m bench.trace [--policies lru,cost] [--requests 300]

12 models (4 random-weight BERTs built here into a temporary directory, 8 fake-loader models
with set sizes and load times), a budget of 30% of their total, three fixed traces (Zipf(1.0);
a popularity shift halfway; a scan of every model amid Zipf traffic), each replayed with 1 and
with 8 closed-loop clients per policy, against a real `ModelManager` in a worker process
(bench/trace_run.py). In process rather than over HTTP: the figures are the manager's own
(every load's bytes and seconds), and no HTTP client competes with loads for the 2 cores; the
HTTP layer takes no part in eviction. Offline bounds replay the same traces by bytes
(bench/trace_sim.py). "today" is the code before the eviction work (its figures are kept in
TODAY below, measured with this benchmark on that code).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench.context import Context
from bench.progress import progress
from bench.row import Row
from bench.servers import REPO, VENV_PY, server_env
from bench.trace_sim import bounds, make_traces

RUNNER = [str(VENV_PY), "-m", "bench.trace_run"]
REQUESTS = 300
CLIENTS = (1, 8)
SEED = 8
# Random-weight BERTs: (hidden size, layers) -> about 8, 17, 29 and 50 MB of weights.
BERTS = {
    "bert-8m": {"hidden": 64, "layers": 2},
    "bert-17m": {"hidden": 128, "layers": 2},
    "bert-29m": {"hidden": 192, "layers": 3},
    "bert-50m": {"hidden": 256, "layers": 6},
}
# Fake models: (bytes, load seconds); some cheap per byte to reload, some dear.
FAKES = {
    "fake-5m": (5_000_000, 0.30),
    "fake-10m": (10_000_000, 0.05),
    "fake-12m": (12_000_000, 0.25),
    "fake-15m": (15_000_000, 0.10),
    "fake-20m": (20_000_000, 0.35),
    "fake-25m": (25_000_000, 0.05),
    "fake-35m": (35_000_000, 0.20),
    "fake-40m": (40_000_000, 0.08),
}
BUDGET_SHARE = 0.30
# "Today": the code before the eviction work (commit d4678bd), measured with this module on
# 2026-11-24 (REQUESTS=300, SEED=8, 2 shared cores; `--policies today --code <that checkout>`).
# The full table is in docs/benchmarks-trace.md.
TODAY: dict[str, dict[int, dict[str, float]]] = {
    "zipf": {
        1: {"loads_per_1k": 480.0, "p50_ms": 40.1, "p99_ms": 773.9, "throughput": 6.39},
        8: {"loads_per_1k": 523.3, "p50_ms": 500.1, "p99_ms": 6287.7, "throughput": 10.22},
    },
    "shift": {
        1: {"loads_per_1k": 580.0, "p50_ms": 112.4, "p99_ms": 1035.2, "throughput": 4.57},
        8: {"loads_per_1k": 716.7, "p50_ms": 902.3, "p99_ms": 11283.4, "throughput": 4.03},
    },
    "scan": {
        1: {"loads_per_1k": 586.7, "p50_ms": 107.1, "p99_ms": 2224.9, "throughput": 3.71},
        8: {"loads_per_1k": 620.0, "p50_ms": 669.1, "p99_ms": 4899.7, "throughput": 8.28},
    },
}


def build_models(directory: Path) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """The 12 models.yaml entries and their sizes in bytes (measured ones for the BERTs)."""
    out = subprocess.run(
        [*RUNNER, "build", str(directory), json.dumps(BERTS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=server_env(),
        check=False,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"building the BERTs failed:\n{out.stderr[-3000:]}")
    sizes: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    entries: dict[str, dict[str, Any]] = {
        name: {"task": "sentence-embeddings", "source": str(directory / name)} for name in BERTS
    }
    for name, (size, seconds) in FAKES.items():
        entries[name] = {
            "loader": "fake",
            "options": {"size": size, "load_seconds": seconds, "predict_seconds": 0.005},
        }
        sizes[name] = size
    return entries, sizes


def write_config(directory: Path, label: str, entries: dict[str, Any], budget: int) -> Path:
    """A models.yaml for one policy ("today": the key did not exist yet)."""
    server: dict[str, Any] = {"memory_budget": budget, "watch": False}
    if label != "today":
        server["eviction"] = label
    path = directory / f"trace-{label}.yaml"
    path.write_text(yaml.safe_dump({"server": server, "models": entries}, sort_keys=False))
    return path


def measure(
    policies: list[str],
    requests: int,
    workdir: Path,
    clients: tuple[int, ...] = CLIENTS,
    code: Path | None = None,
) -> dict[str, Any]:
    """Build, replay every trace per policy and client count, compute the bounds."""
    progress("  trace: building the random BERTs")
    entries, sizes = build_models(workdir / "models")
    budget = int(sum(sizes.values()) * BUDGET_SHARE)
    traces = make_traces(list(entries), requests, SEED)
    runs = [
        {
            "label": p,
            "trace": t,
            "clients": c,
            "config": str(write_config(workdir, p, entries, budget)),
        }
        for t in traces
        for p in policies
        for c in clients
    ]
    job = {"runs": runs, "traces": traces, "warm_dir": str(workdir / "models" / "bert-8m")}
    progress(f"  trace: {len(runs)} replays of {requests} requests, budget {budget / 1e6:.0f} MB")
    env = server_env()
    if code is not None:
        env["TRACE_CODE_ROOT"] = str(code)
    out = subprocess.run(
        [*RUNNER, "run", json.dumps(job)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        check=False,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the trace runner failed ({out.returncode})")
    results: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "requests": requests,
        "budget_bytes": budget,
        "sizes": sizes,
        "bounds": {name: bounds(trace, sizes, budget) for name, trace in traces.items()},
        "results": results,
    }


def _find(raw: dict[str, Any], label: str, trace: str, clients: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = raw["results"]
    for result in results:
        if (result["label"], result["trace"], result["clients"]) == (label, trace, clients):
            return result
    raise KeyError((label, trace, clients))


def per_1000(raw: dict[str, Any], loads: float) -> float:
    """Loads per 1,000 requests."""
    return round(loads * 1000 / int(raw["requests"]), 1)


def detail_table(raw: dict[str, Any]) -> str:
    """Every replay as a Markdown table, with the offline bounds."""
    lines = [
        "| trace | policy | clients | loads/1k req | MB loaded | s loading | req/s | p50 ms"
        " | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in raw["results"]:
        lines.append(
            f"| {r['trace']} | {r['label']} | {r['clients']} | {per_1000(raw, r['loads']):.0f}"
            f" | {r['bytes_loaded'] / 1e6:.0f} | {r['seconds_loading']:.1f}"
            f" | {r['throughput']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f}"
            f" | {sum(r['errors'].values())} |"
        )
    for trace, b in raw["bounds"].items():
        seq, freq, opt = (per_1000(raw, b[k]) for k in ("lru_sequential", "frequency", "belady"))
        lines.append(
            f"| {trace} | bounds | - | LRU (sequential) {seq:.0f}, frequency {freq:.0f},"
            f" Belady {opt:.0f} | | | | | | |"
        )
    return "\n".join(lines)


TRACES = ("zipf", "shift", "scan")
POLICIES = ("lru", "cost")


def _concurrency_rows(raw: dict[str, Any]) -> list[Row]:
    """Loads with 8 clients against 1: more clients must not cause more loads."""
    rows: list[Row] = []
    for trace in TRACES:
        for policy in POLICIES:
            one, eight = _find(raw, policy, trace, 1), _find(raw, policy, trace, 8)
            rows.append(
                Row(
                    f"trace {trace}: {policy} loads/1k, 8 clients vs 1",
                    per_1000(raw, eight["loads"]),
                    per_1000(raw, one["loads"]),
                    "loads",
                    "ratio",
                    1.0 if policy == "lru" or trace == "zipf" else None,
                )
            )
    return rows


def _policy_rows(raw: dict[str, Any]) -> list[Row]:
    """The cost-aware policy's loads against LRU's and against Belady's optimum (Zipf)."""
    lru, cost = _find(raw, "lru", "zipf", 8), _find(raw, "cost", "zipf", 8)
    belady = raw["bounds"]["zipf"]["belady"]
    return [
        Row(
            "trace zipf: cost loads vs lru, 8 clients",
            cost["loads"],
            lru["loads"],
            "loads",
            "ratio",
            0.75,
        ),
        Row(
            "trace zipf: cost loads vs Belady, 8 clients",
            cost["loads"],
            belady,
            "loads",
            "ratio",
            1.3,
        ),
    ]


def _today_rows(raw: dict[str, Any]) -> list[Row]:
    """p99 and loads with 8 clients against the kept figures of the code before the work."""
    rows: list[Row] = []
    for name in TRACES:
        today = TODAY[name][8]
        for policy in POLICIES:
            result = _find(raw, policy, name, 8)
            rows.append(
                Row(
                    f"trace {name}: {policy} p99, 8 clients vs today's",
                    result["p99_ms"],
                    today["p99_ms"],
                    "ms",
                    "ratio",
                    0.5 if name == "zipf" else None,
                )
            )
            rows.append(
                Row(
                    f"trace {name}: {policy} loads/1k, 8 clients vs today's (info)",
                    per_1000(raw, result["loads"]),
                    today["loads_per_1k"],
                    "loads",
                    "ratio",
                    None,
                )
            )
    return rows


def rows_of(raw: dict[str, Any]) -> list[Row]:
    """The suite's rows: the issue's targets, measured against same-run or kept baselines."""
    return [*_concurrency_rows(raw), *_policy_rows(raw), *_today_rows(raw)]


def trace(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Scenario `trace`: the rows of the suite."""
    raw = measure(["lru", "cost"], REQUESTS, ctx.workdir / "trace")
    print(detail_table(raw), file=sys.stderr)
    return rows_of(raw), raw


def main(argv: list[str] | None = None) -> int:
    """Standalone: replay the traces for the given policies; print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", default="lru,cost", help="lru, cost, or today")
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--save", type=Path, help="write the raw JSON here")
    parser.add_argument("--code", type=Path, help="replay this checkout's registry/ instead")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="model-registry-trace-") as tmp:
        raw = measure(args.policies.split(","), args.requests, Path(tmp), code=args.code)
    table = detail_table(raw)
    print(table)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(raw, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
