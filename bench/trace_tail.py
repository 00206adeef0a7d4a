"""What the trace benchmark's slow requests waited for (a diagnosis tool, not a scenario).

    .venv/bin/python -m bench.trace_tail [--trace zipf] [--clients 8] [--policy cost] [--runs 3]

Replays one trace of bench/trace.py against a fresh real `ModelManager` (in this process,
after warming the imports like bench/trace_run.py) and times each load's steps: queued for a
`max_parallel_loads` permit, estimating, waiting in `reserve` (behind another running load,
or for victims' bytes to be released), the loader, settling the measured size. Each request
slower than the run's p95 is then put down to what it waited for: its model's load (and in
which step that load spent its time), or its turn on the model's thread. The steps are read
by wrapping the lifecycle's methods in this process; the registry's code is unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.trace import build_models, write_config
from bench.trace_sim import make_traces

TEXT = "a short sentence to embed"


@dataclass
class Load:
    """One load's steps (monotonic seconds)."""

    model: str
    begun: float
    permit: float | None = None
    reserve_in: float | None = None
    reserve_out: float | None = None
    behind_load: float = 0.0  # seconds reserve() waited because another load ran
    behind_since: float | None = None
    evicted: int = 0  # victims this load's reserve evicted
    loader_out: float | None = None
    ended: float | None = None
    outcome: str = "?"
    running_at_permit: list[str] = field(default_factory=list)


class Probe:
    """Wraps one lifecycle's methods to time each load's steps."""

    def __init__(self, life: Any) -> None:
        self.life = life
        self.loads: list[Load] = []
        self.current: dict[str, Load] = {}
        self.capacity_errors = 0
        self._wrap()

    def _wrap(self) -> None:
        life = self.life
        probe = self
        original_load = life._load
        original_reserve = life.reserve
        original_running = life._loads_running
        original_evict = life._evict
        original_loader = life._run_loader
        limit = life.load_limit

        class Permit:
            async def __aenter__(self) -> None:
                await limit.__aenter__()
                task = asyncio.current_task()
                load = probe._of_task(task)
                if load is not None:
                    load.permit = time.monotonic()
                    load.running_at_permit = [
                        n for n, lo in probe.current.items() if lo.permit and lo is not load
                    ]

            async def __aexit__(self, *exc: object) -> None:
                await limit.__aexit__(*exc)

        life.load_limit = Permit()

        async def load(slot: Any) -> Any:
            record = Load(slot.name, time.monotonic())
            self.loads.append(record)
            self.current[slot.name] = record
            asyncio.current_task().probe_load = record  # type: ignore[union-attr]
            try:
                outcome = await original_load(slot)
                record.outcome = "ok" if outcome is None else type(outcome).__name__
                if record.outcome == "CapacityExceeded":
                    self.capacity_errors += 1
                return outcome
            finally:
                record.ended = time.monotonic()
                self.current.pop(slot.name, None)

        async def reserve(slot: Any, nbytes: int, *, replacing: bool = False) -> None:
            record = self.current.get(slot.name)
            if record is not None and not replacing:
                record.reserve_in = time.monotonic()
            try:
                await original_reserve(slot, nbytes, replacing=replacing)
            finally:
                if record is not None and not replacing:
                    record.reserve_out = time.monotonic()
                    if record.behind_since is not None:
                        record.behind_load += record.reserve_out - record.behind_since
                        record.behind_since = None

        def loads_running(slot: Any) -> bool:
            running = bool(original_running(slot))
            record = self.current.get(slot.name)
            if record is not None:
                now = time.monotonic()
                if running and record.behind_since is None:
                    record.behind_since = now
                elif not running and record.behind_since is not None:
                    record.behind_load += now - record.behind_since
                    record.behind_since = None
            return running

        def evict(victims: Any, purpose: str, reason: Any = None) -> None:
            name = purpose.removeprefix("to fit ")
            record = self.current.get(name)
            if record is not None:
                record.evicted += len(victims)
            original_evict(victims, purpose, reason)

        async def run_loader(slot: Any, seconds: float) -> Any:
            try:
                return await original_loader(slot, seconds)
            finally:
                record = self.current.get(slot.name)
                if record is not None:
                    record.loader_out = time.monotonic()

        life._load = load
        life.reserve = reserve
        life._loads_running = loads_running
        life._evict = evict
        life._run_loader = run_loader

    def _of_task(self, task: Any) -> Load | None:
        return getattr(task, "probe_load", None)


@dataclass
class Request:
    """One request's times and outcome."""

    model: str
    sent: float
    done: float
    error: str | None
    hit: bool


async def replay(config: Path, trace: list[str], clients: int) -> dict[str, Any]:
    """One replay with the probe; returns the requests, loads and figures."""
    from registry.config.file import load_config
    from registry.manager import ModelManager
    from registry.payload import TextRequest

    manager = ModelManager(load_config(config))
    await manager.start()
    life = manager._life
    probe = Probe(life)
    roster = manager._roster
    requests: list[Request] = []
    queue = iter(trace)

    async def client() -> None:
        for name in queue:
            slot = roster.lookup(name)
            hit = slot.ready
            sent = time.monotonic()
            error = None
            try:
                await manager.predict(name, TextRequest(TEXT))
            except Exception as exc:
                error = type(exc).__name__
            requests.append(Request(name, sent, time.monotonic(), error, hit))

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.monotonic() - started
    await manager.shutdown(5.0)
    return {"requests": requests, "loads": probe.loads, "wall": wall, "started": started}


def _load_for(req: Request, loads: list[Load]) -> Load | None:
    """The load of the request's model that ended last before (or when) it was answered."""
    best = None
    for load in loads:
        if load.model != req.model or load.ended is None:
            continue
        if load.ended <= req.done + 1e-3 and load.ended >= req.sent - 1e-3:
            best = load
    return best


def analyse(run: dict[str, Any]) -> dict[str, Any]:
    """Figures of one replay and what each request above p95 waited for."""
    reqs: list[Request] = run["requests"]
    loads: list[Load] = run["loads"]
    lat = sorted(r.done - r.sent for r in reqs)
    n = len(lat)
    p95 = lat[int(n * 0.95)]
    p99 = lat[min(n - 1, int(n * 0.99))]
    causes: Counter[str] = Counter()
    steps: dict[str, float] = {}
    slow = [r for r in reqs if r.done - r.sent > p95]
    lines = []
    for r in sorted(slow, key=lambda r: r.sent - r.done):
        total = r.done - r.sent
        load = _load_for(r, loads)
        if r.error:
            cause = f"error {r.error}"
        elif load is None:
            cause = "no load (model's thread / queue)"
        else:
            begun = max(load.begun, r.sent)
            permit = (load.permit or begun) - begun
            reserve = 0.0
            if load.reserve_in is not None and load.reserve_out is not None:
                reserve = load.reserve_out - max(load.reserve_in, r.sent)
            behind = min(load.behind_load, max(reserve, 0.0))
            loader = (load.loader_out or load.ended or 0) - (load.reserve_out or begun)
            parts = {
                "before its load began (earlier load of the model / backoff)": load.begun - r.sent,
                "max_parallel_loads permit": max(permit, 0.0),
                "reserve: behind another load": behind,
                "reserve: evicting / room": max(reserve - behind, 0.0),
                "loader": max(loader, 0.0),
            }
            cause = max(parts, key=lambda k: parts[k])
            for key, value in parts.items():
                steps[key] = steps.get(key, 0.0) + max(value, 0.0)
            lines.append(
                f"  {r.model:>9} {total * 1e3:6.0f} ms: "
                + ", ".join(
                    f"{k.split(':')[-1].strip()[:18]} {v * 1e3:.0f}" for k, v in parts.items()
                )
                + f" | evicted {load.evicted}, running at permit {load.running_at_permit}"
            )
        causes[cause] += 1
    return {
        "p50_ms": lat[n // 2] * 1e3,
        "p95_ms": p95 * 1e3,
        "p99_ms": p99 * 1e3,
        "throughput": n / run["wall"],
        "loads": len([lo for lo in loads if lo.outcome == "ok"]),
        "load_outcomes": dict(Counter(lo.outcome for lo in loads)),
        "errors": dict(Counter(r.error for r in reqs if r.error)),
        "causes": dict(causes),
        "step_seconds": {k: round(v, 2) for k, v in steps.items()},
        "lines": lines,
    }


def main(argv: list[str] | None = None) -> int:
    """Replay one trace `--runs` times and print what the slow requests waited for."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", default="zipf")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--policy", default="cost")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--models", type=Path, help="a directory of built BERTs to reuse")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("registry").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="model-registry-tail-") as tmp:
        workdir = Path(tmp)
        models = args.models or workdir / "models"
        entries, sizes = build_models(models)
        budget = int(sum(sizes.values()) * 0.30)
        config = write_config(workdir, args.policy, entries, budget)
        trace = make_traces(list(entries), args.requests, 8)[args.trace]
        from bench.trace_run import warm_imports

        warm_imports(models / "bert-8m")
        summary = []
        for i in range(args.runs):
            result = analyse(asyncio.run(replay(config, trace, args.clients)))
            lines = result.pop("lines")
            print(f"run {i + 1}: {json.dumps(result)}", flush=True)
            if args.verbose:
                print("\n".join(lines), flush=True)
            summary.append(result)
    keys = ("p99_ms", "p95_ms", "p50_ms", "throughput", "loads")
    for key in keys:
        values = sorted(s[key] for s in summary)
        middle = values[len(values) // 2]
        print(f"{key}: median {middle:.1f} (min {values[0]:.1f}, max {values[-1]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
