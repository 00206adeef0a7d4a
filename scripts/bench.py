#!/usr/bin/env python3
"""The benchmark suite: each scenario against a baseline measured in the same run.

    scripts/bench.sh [--quick] [--only startup,cold,warm,...,memory,trace,protocols,...]

prints a table; a full run (no --quick, --only, --reps or --duration; or any run with
--write) writes BENCHMARKS.json (raw numbers) and BENCHMARKS.md (the table, the machine, the
date, the command, the methods). The analysis section of an existing
BENCHMARKS.md (between the `analysis` markers) is kept. Every figure is a ratio (or a delta)
against its baseline, so the numbers mean something on a shared, noisy machine. Plumbing:
bench_common.py (servers, quiet waits), bench_http.py (inputs, HTTP clients), bench_wrk.py.
Scenarios: bench_scenarios.py, bench_serving.py, bench_load.py. In-process baselines:
bench_inproc.py. The table and BENCHMARKS.*: bench_report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_load
import bench_observe
import bench_protocols
import bench_ray
import bench_scenarios
import bench_serving
import bench_trace
import bench_workers
from bench_common import CLI, QUIET, REPO, STORE, progress
from bench_http import Inputs
from bench_report import Row, kept_analysis, machine, markdown, max_others, text_table
from bench_scenarios import Context
from bench_wrk import wrk_path

Scenario = Callable[[Context], tuple[list[Row], dict[str, Any]]]
SCENARIOS: dict[str, tuple[Scenario, bool]] = {  # name -> (function, needs wrk)
    "startup": (bench_scenarios.startup, False),
    "cold": (bench_scenarios.cold_load, False),
    "warm": (bench_serving.warm_latency, True),
    "throughput": (bench_serving.throughput, True),
    "isolation": (bench_load.isolation, True),
    "stampede": (bench_load.stampede, False),
    "memory": (bench_load.memory, False),
    "protocols": (bench_protocols.protocols, False),
    "ray": (bench_ray.ray_scale, False),
    "trace": (bench_trace.trace, False),
    "observe": (bench_observe.observe, False),
    "workers": (bench_workers.workers, True),
}
ALIASES = {"cold-load": "cold", "warm-latency": "warm", "batching": "throughput"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter runs")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--reps", type=int, help="repetitions (default 5, quick 2)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10, quick 3)")
    parser.add_argument("--out", type=Path, default=REPO, help="where BENCHMARKS.* go")
    parser.add_argument(
        "--write",
        action="store_true",
        help="write BENCHMARKS.* even for a --quick or --only run (a full run always writes)",
    )
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    parser.add_argument("--keep-temp", action="store_true", help="keep configs and server logs")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each measurement, wait up to this many seconds for other processes to "
        "leave the CPUs idle (0: do not wait)",
    )
    return parser.parse_args(argv)


def selected(only: str | None) -> list[str]:
    """The scenarios to run, in suite order."""
    if not only:
        return list(SCENARIOS)
    names = [ALIASES.get(n.strip(), n.strip()) for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    return [n for n in SCENARIOS if n in names]


NO_DEMO_MODELS = {"observe"}  # scenarios that use only the fake loader


def preflight(names: list[str]) -> None:
    """Fail early, and clearly, when the set-up is missing."""
    if not CLI.exists():
        raise SystemExit(f"{CLI} is missing: run scripts/setup.sh first")
    if set(names) <= NO_DEMO_MODELS:
        return
    missing = [
        name
        for name in ("digits-resnet", "langid-bert", "bert-memory-demo", "iris-mlp")
        if not (STORE / name / "BUILD.json").exists()
    ]
    if missing:
        raise SystemExit(f"demo models missing in {STORE}: {missing}; run scripts/setup.sh")


def main(argv: list[str] | None = None) -> int:
    """Run the suite."""
    args = parse_args(argv)
    names = selected(args.only)
    preflight(names)
    QUIET["max_wait"] = args.quiet_wait
    QUIET["budget"] = 60.0 if args.quick else 180.0
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="model-registry-bench-"))
    reps = args.reps or (2 if args.quick else 5)
    duration = args.duration or (3.0 if args.quick else 10.0)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(["scripts/bench.py", *sys.argv[1:]])
    report: dict[str, Any] = {
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "reps": reps,
            "duration": duration,
            "quick": args.quick,
            "quiet_wait": args.quiet_wait,
        },
        "scenarios": {},
        "errors": {},
    }
    rows: list[Row] = []
    try:
        progress(f"inputs and work files in {workdir}")
        ctx = Context(workdir, Inputs(workdir / "inputs"), reps, duration, args.quick)
        for name in names:
            function, needs_wrk = SCENARIOS[name]
            if needs_wrk and wrk_path() is None:
                report["errors"][name] = "wrk is not installed (apt-get install -y wrk)"
                progress(f"{name}: skipped, wrk is not installed")
                continue
            progress(f"{name}: start")
            t0 = time.monotonic()
            try:
                scenario_rows, raw = function(ctx)
            except Exception as exc:
                traceback.print_exc()
                report["errors"][name] = f"{type(exc).__name__}: {str(exc)[:500]}"
                progress(f"{name}: FAILED ({type(exc).__name__})")
                continue
            seconds = time.monotonic() - t0
            others = max_others(raw)
            if others > 0.2:
                for row in scenario_rows:
                    extra = f"other processes used up to {others:.2f} cores meanwhile"
                    row.note = f"{row.note}; {extra}" if row.note else extra
            rows += scenario_rows
            report["scenarios"][name] = {
                "seconds": seconds,
                "rows": [r.as_dict() for r in scenario_rows],
                "raw": raw,
            }
            progress(f"{name}: done in {seconds:.0f} s")
    finally:
        if args.keep_temp:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report["seconds"] = time.monotonic() - started
    print()
    print(text_table(rows))
    for row in rows:
        if row.note:
            print(f"  {row.scenario}: {row.note}")
    for name, error in report["errors"].items():
        print(f"{name}: did not run: {error}")
    full = not args.quick and not args.only and not args.reps and not args.duration
    if (full or args.write) and not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        md_path = args.out / "BENCHMARKS.md"
        analysis = kept_analysis(md_path)
        (args.out / "BENCHMARKS.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        md_path.write_text(markdown(report, rows, analysis))
        progress(f"wrote {args.out / 'BENCHMARKS.json'} and {md_path}")
    else:
        progress("BENCHMARKS.* not written (a partial run; --write writes it anyway)")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
