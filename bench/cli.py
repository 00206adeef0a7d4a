"""The command line of the suite: `python -m bench` (scripts/bench.sh) and its options.

    scripts/bench.sh [--quick] [--only startup,cold,warm,...,memory,trace,protocols,...]

prints a table; a full run (no --quick, --only, --reps or --duration; or any run with
--write) writes BENCHMARKS.json (raw numbers) and BENCHMARKS.md (the table, the machine, the
date, the command, the methods). The analysis section of an existing BENCHMARKS.md (between
the `analysis` markers) is kept. Every figure is a ratio (or a delta) against its baseline,
so the numbers mean something on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.context import Context
from bench.inputs import Inputs
from bench.progress import progress
from bench.quiet import Quiet
from bench.servers import CLI, REPO, STORE
from bench.suite import NO_DEMO_MODELS, SCENARIOS, Report, print_table, run_scenario, write
from devkit.demo import missing_builds

ALIASES = {"cold-load": "cold", "warm-latency": "warm", "batching": "throughput"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench.sh",
        description="The benchmark suite: each scenario against a baseline measured in the "
        "same run.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter runs")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--reps", type=int, help="repetitions (default 5, quick 2)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10, quick 3)")
    parser.add_argument(
        "--soak-seconds", type=float, help="length of the soak scenario (default 480, quick 120)"
    )
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


def preflight(names: list[str]) -> None:
    """Fail early, and clearly, when the set-up is missing."""
    if not CLI.exists():
        raise SystemExit(f"{CLI} is missing: run scripts/setup.sh first")
    if set(names) <= NO_DEMO_MODELS:
        return
    missing = missing_builds()
    if missing:
        raise SystemExit(f"demo models missing in {STORE}: {missing}; run scripts/setup.sh")


def main(argv: list[str] | None = None) -> int:
    """Run the suite."""
    args = parse_args(argv)
    names = selected(args.only)
    preflight(names)
    started = time.monotonic()
    reps = args.reps or (2 if args.quick else 5)
    duration = args.duration or (3.0 if args.quick else 10.0)
    quiet = Quiet(max_wait=args.quiet_wait, budget=60.0 if args.quick else 180.0)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(["python -m bench", *sys.argv[1:]])
    settings = {
        "reps": reps,
        "duration": duration,
        "quick": args.quick,
        "quiet_wait": args.quiet_wait,
        "soak_seconds": args.soak_seconds,
    }
    report = Report.start(command, settings)
    workdir = Path(tempfile.mkdtemp(prefix="model-registry-bench-"))
    try:
        progress(f"inputs and work files in {workdir}")
        ctx = Context(workdir, Inputs(workdir / "inputs"), reps, duration, args.quick, quiet)
        ctx.soak_seconds = args.soak_seconds
        for name in names:
            run_scenario(ctx, name, report)
    finally:
        if args.keep_temp:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.document["seconds"] = time.monotonic() - started
    print_table(report)
    full = not (args.quick or args.only or args.reps or args.duration or args.soak_seconds)
    if (full or args.write) and not args.no_write:
        write(report, args.out)
    else:
        progress("BENCHMARKS.* not written (a partial run; --write writes it anyway)")
    return 1 if report.errors else 0
