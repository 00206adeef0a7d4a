"""What every scenario gets: the work directory, the inputs, the settings, the quiet waits.

A scenario is a function `(Context) -> (rows, raw)`: it measures the server and its baseline
in the same run and returns table rows (bench.row.Row) and raw numbers for BENCHMARKS.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.client import raw_request
from bench.inputs import Inputs
from bench.progress import progress
from bench.quiet import Quiet
from bench.servers import inproc, model
from bench.stats import median, percentile

# The kind of input (Inputs.files) each model of the warm and throughput scenarios gets.
MODEL_KIND = {"digits": "image", "langid": "text", "minilm": "sentence"}


@dataclass
class Context:
    """What the scenarios share: a work directory, inputs, repetitions, durations, waits."""

    workdir: Path
    inputs: Inputs
    reps: int
    duration: float
    quick: bool
    quiet: Quiet
    soak_seconds: float | None = None  # the soak's length (None: its default)
    loops: dict[str, dict[str, Any]] = field(default_factory=dict)

    def text_request(self, port: int, name: str, index: int = 0) -> bytes:
        """Raw bytes of one POST of a sentence."""
        body = self.inputs.text_bodies[index].read_bytes()
        return raw_request(port, "POST", f"/models/{name}/predict", body, "application/json")

    def baseline_loop(self, name: str, threads: int | None = None) -> dict[str, Any]:
        """The in-process sequential loop of a model (run once per suite run, then reused).

        `threads`: torch intra-op threads (default: the server's default, cores - 1).
        """
        key = name if threads is None else f"{name}@{threads}"
        if key not in self.loops:
            self.loops[key] = self._measure_loop(name, threads)
        return self.loops[key]

    def _measure_loop(self, name: str, threads: int | None) -> dict[str, Any]:
        with_threads = f", {threads} torch threads" if threads else ""
        progress(
            f"  in-process baseline: {name}, one input per call, {self.duration:g}s" + with_threads
        )
        kind = MODEL_KIND[name]
        entry = model(name)
        job = {
            "mode": "loop",
            "task": entry["task"],
            "dir": entry["source"],
            "kind": kind,
            "files": [str(p) for p in self.inputs.files(kind)],
            "seconds": self.duration,
            "threads": threads,
        }
        result = self.quiet.measure(f"in-process {name}", [], lambda: inproc(job))
        lat = result.pop("latencies_s")
        # Medians over thirds of the run, as the server's figures are over wrk rounds.
        thirds = [lat[i * len(lat) // 3 : (i + 1) * len(lat) // 3] for i in range(3)]
        result.update(
            p50_ms=median(percentile(t, 50) for t in thirds) * 1e3,
            p99_ms=median(percentile(t, 99) for t in thirds) * 1e3,
            mean_ms=sum(lat) / len(lat) * 1e3,
            rate=median(len(t) / sum(t) for t in thirds),
        )
        return result
