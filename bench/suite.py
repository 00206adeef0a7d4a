"""The run of the suite: the scenarios in order, the table, BENCHMARKS.json and BENCHMARKS.md."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    cold,
    generation,
    isolation,
    memory,
    observe,
    protocols,
    ray_scale,
    soak,
    stampede,
    startup,
    throughput,
    trace,
    vs_litserve,
    warm,
    workers,
)
from bench.context import Context
from bench.machine import machine
from bench.progress import progress
from bench.report import kept_analysis, markdown, max_others, text_table
from bench.row import Row
from bench.wrk import wrk_path

Scenario = Callable[[Context], tuple[list[Row], dict[str, Any]]]
SCENARIOS: dict[str, tuple[Scenario, bool]] = {  # name -> (function, needs wrk)
    "startup": (startup.startup, False),
    "cold": (cold.cold_load, False),
    "warm": (warm.warm_latency, True),
    "throughput": (throughput.throughput, True),
    "litserve": (vs_litserve.litserve, True),
    "isolation": (isolation.isolation, True),
    "stampede": (stampede.stampede, False),
    "memory": (memory.memory, False),
    "protocols": (protocols.protocols, False),
    "ray": (ray_scale.ray_scale, False),
    "trace": (trace.trace, False),
    "observe": (observe.observe, False),
    "workers": (workers.workers, True),
    "generation": (generation.generation, False),
    "soak": (soak.soak, False),
}
NO_DEMO_MODELS = {"observe"}  # scenarios that use only the fake loader
OTHERS_NOTE = 0.2  # cores: above this, every row of the scenario says others were busy


@dataclass
class Report:
    """What a run found: BENCHMARKS.json's document and the table's rows."""

    document: dict[str, Any]
    rows: list[Row]

    @classmethod
    def start(cls, command: str, settings: dict[str, Any]) -> Report:
        """An empty report of a run starting now."""
        document = {
            "command": command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": settings,
            "scenarios": {},
            "errors": {},
        }
        return cls(document, [])

    @property
    def errors(self) -> dict[str, str]:
        """Scenario -> why it did not run."""
        errors: dict[str, str] = self.document["errors"]
        return errors


def run_scenario(ctx: Context, name: str, report: Report) -> None:
    """One scenario into the report (its rows, raw numbers and time, or why it did not run)."""
    function, needs_wrk = SCENARIOS[name]
    if needs_wrk and wrk_path() is None:
        report.errors[name] = "wrk is not installed (apt-get install -y wrk)"
        progress(f"{name}: skipped, wrk is not installed")
        return
    progress(f"{name}: start")
    t0 = time.monotonic()
    try:
        rows, raw = function(ctx)
    except Exception as exc:
        traceback.print_exc()
        report.errors[name] = f"{type(exc).__name__}: {str(exc)[:500]}"
        progress(f"{name}: FAILED ({type(exc).__name__})")
        return
    seconds = time.monotonic() - t0
    others = max_others(raw)
    if others > OTHERS_NOTE:
        extra = f"other processes used up to {others:.2f} cores meanwhile"
        for row in rows:
            row.note = f"{row.note}; {extra}" if row.note else extra
    report.rows += rows
    report.document["scenarios"][name] = {
        "seconds": seconds,
        "rows": [r.as_dict() for r in rows],
        "raw": raw,
    }
    progress(f"{name}: done in {seconds:.0f} s")


def print_table(report: Report) -> None:
    """The table, its notes and the scenarios that did not run, on stdout."""
    print()
    print(text_table(report.rows))
    for row in report.rows:
        if row.note:
            print(f"  {row.scenario}: {row.note}")
    for name, error in report.errors.items():
        print(f"{name}: did not run: {error}")


def write(report: Report, out: Path) -> None:
    """BENCHMARKS.json and BENCHMARKS.md in `out` (BENCHMARKS.md's analysis is kept)."""
    out.mkdir(parents=True, exist_ok=True)
    md_path = out / "BENCHMARKS.md"
    analysis = kept_analysis(md_path)
    json_text = json.dumps(report.document, indent=1, default=str) + "\n"
    (out / "BENCHMARKS.json").write_text(json_text)
    md_path.write_text(markdown(report.document, report.rows, analysis))
    progress(f"wrote {out / 'BENCHMARKS.json'} and {md_path}")
