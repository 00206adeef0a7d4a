"""Scenario `memory`: tracked bytes never exceed the budget; RSS returns after unloading.

Budget 300 MiB (bert-memory-demo and minilm do not fit together). One-time costs (imports,
allocator growth) are paid for every model first; then evictions in cycles, then two clients
at once while a thread samples GET /models; then everything is unloaded and RSS read again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from bench.background import loop_in_thread
from bench.client import Http
from bench.context import Context
from bench.progress import progress
from bench.row import Row
from bench.servers import BATCH, IRIS_INPUT, model, start_server, wait_state, write_config
from bench.stats import median
from devkit.server import Process

NAMES = ["digits", "langid", "iris", "minilm", "bert-memory-demo"]
CYCLE = ("bert-memory-demo", "langid", "minilm", "digits", "iris")
CLIENT_ORDERS = (["bert-memory-demo", "digits"], ["minilm", "langid", "iris"])
MIB = 2**20


@dataclass
class _Run:
    """One server of the scenario and what it needs to drive it."""

    ctx: Context
    server: Process
    png: bytes
    sentence: str
    http: Http = field(init=False)
    statuses: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = Http(self.server.port)

    def predict(self, name: str, http: Http | None = None) -> int:
        """One request to a model: its status."""
        http = http or self.http
        if name == "digits":
            return http.predict_image(name, self.png)[0]
        if name == "iris":
            return http.predict_text(name, [IRIS_INPUT])[0]
        return http.predict_text(name, self.sentence)[0]

    def unload_all(self) -> None:
        """Unload every loaded model (admin API), wait, and let the allocator settle."""
        for entry in self.http.get("/models")["models"]:
            if entry["state"] != "unloaded":
                self.http.admin(entry["name"], "unload")
        wait_state(self.http, NAMES, "unloaded", timeout=60)
        time.sleep(1.0)  # RSS is read after the freed memory is returned, not a synchronisation

    def rss_now(self) -> int:
        """The median of 5 VmRSS readings, 0.2 s apart."""
        samples = []
        for _ in range(5):
            samples.append(self.server.rss_bytes())
            time.sleep(0.2)
        return int(median(samples))

    def warm_up(self, group: tuple[str, ...]) -> int:
        """Load and unload each model of `group` once, one at a time; RSS afterwards."""
        for name in group:
            status = self.predict(name)
            if status != 200:
                raise RuntimeError(f"warm-up predict of {name}: {status}\n{self.server.tail()}")
            self.unload_all()  # minilm and bert-memory-demo do not fit together
        return self.rss_now()

    def cycles(self, raw: dict[str, Any]) -> None:
        """Requests to every model in turn (evictions); the leak-check level after cycle 1."""
        cycles = 2 if self.ctx.quick else 3
        for cycle in range(cycles):
            for name in CYCLE:
                self.statuses.append(self.predict(name))
            progress(
                f"  eviction cycle {cycle + 1}/{cycles}: statuses {sorted(set(self.statuses))}"
            )
            if cycle == 0:  # every model has been loaded once: the steady-state level
                self.unload_all()
                raw["rss_after_first_cycle"] = self.rss_now()

    def contend(self) -> None:
        """Two clients at once, one on each big model, for the run's duration."""
        clients = []
        for order in CLIENT_ORDERS:
            client = Http(self.server.port)

            def one_round(client: Http = client, order: list[str] = order) -> None:
                for name in order:
                    self.statuses.append(self.predict(name, client))

            clients.append(loop_in_thread(one_round))
        time.sleep(self.ctx.duration)  # the length of the measurement
        for _, stop in clients:
            stop.set()
        for thread, _ in clients:
            thread.join(120)


def _sampled(run: _Run, raw: dict[str, Any]) -> list[tuple[float, int, int, int]]:
    """Evictions and contention while a thread samples used bytes, budget and RSS."""
    samples: list[tuple[float, int, int, int]] = []
    sampler_http = Http(run.server.port)

    def sample() -> None:
        snap = sampler_http.get("/models")
        samples.append(
            (time.monotonic(), snap["used_bytes"], snap["budget_bytes"], run.server.rss_bytes())
        )
        time.sleep(0.02)  # the sampling interval

    sampler, stop_sampler = loop_in_thread(sample)
    try:
        run.cycles(raw)
        run.contend()
    finally:
        stop_sampler.set()
        sampler.join(10)
    return samples


def _record(run: _Run, raw: dict[str, Any], samples: list[tuple[float, int, int, int]]) -> None:
    snapshot = run.http.get("/models")
    raw["peak_used_bytes_server"] = snapshot.get("peak_used_bytes")
    raw["load_counts"] = {m["name"]: m["load_count"] for m in snapshot["models"]}
    raw["sizes"] = {m["name"]: m["size_bytes"] for m in snapshot["models"]}
    raw["statuses"] = {str(s): run.statuses.count(s) for s in sorted(set(run.statuses))}
    raw["budget_bytes"] = samples[0][2]
    raw["samples"] = len(samples)
    raw["sample_interval_ms"] = (
        (samples[-1][0] - samples[0][0]) / (len(samples) - 1) * 1e3 if len(samples) > 1 else 0
    )
    raw["max_used_sampled"] = max(s[1] for s in samples)
    raw["over_budget_samples"] = sum(1 for s in samples if s[1] > s[2])
    raw["rss_peak"] = max(s[3] for s in samples)


def _measure(run: _Run, raw: dict[str, Any]) -> None:
    run.server.wait_live(120.0)
    raw["unload_by"] = "admin API"
    raw["rss_start"] = run.server.rss_bytes()
    # The first load of each kind of model pays imports and allocator growth that stay
    # (measured: ~100 MiB). Pay them for every model the run uses, one at a time, then unload.
    raw["rss_before_tiny"] = run.warm_up(("digits", "langid", "iris"))
    raw["rss_before"] = run.warm_up(("minilm", "bert-memory-demo"))
    progress(
        f"  RSS after the one-time costs: tiny models {raw['rss_before_tiny'] / MIB:.0f} "
        f"MiB, every model {raw['rss_before'] / MIB:.0f} MiB"
    )
    _record(run, raw, _sampled(run, raw))
    run.unload_all()
    raw["rss_after"] = run.rss_now()


def _rss_row(
    raw: dict[str, Any], label: str, baseline: str, target: float | None, note: str
) -> Row:
    """RSS after unloading everything against the level in raw[baseline]."""
    return Row(
        label, raw["rss_after"] / MIB, raw[baseline] / MIB, "MiB", "ratio", target, note=note
    )


def _rows(raw: dict[str, Any]) -> list[Row]:
    loads = sum(raw["load_counts"].values())
    budget = raw["budget_bytes"]
    progress(
        f"  {loads} loads, max used {raw['max_used_sampled'] / MIB:.1f} MiB of "
        f"{budget / MIB:.0f} MiB over {raw['samples']} samples; RSS "
        f"{raw['rss_before'] / MIB:.0f} -> peak {raw['rss_peak'] / MIB:.0f} -> "
        f"{raw['rss_after'] / MIB:.0f} MiB"
    )
    peak = max(raw["max_used_sampled"], raw["peak_used_bytes_server"] or 0)
    return [
        Row(
            "memory: peak tracked bytes vs budget",
            peak / MIB,
            budget / MIB,
            "MiB",
            "ratio",
            1.0,
            note=(
                f"{raw['samples']} samples every {raw['sample_interval_ms']:.0f} ms, "
                f"{raw['over_budget_samples']} over budget; {loads} loads; "
                f"statuses {raw['statuses']}"
            ),
        ),
        _rss_row(
            raw,
            "memory: RSS after unloading all vs before (every model loaded once first)",
            "rss_before",
            1.05,
            f"peak RSS {raw['rss_peak'] / MIB:.0f} MiB; unloaded by {raw['unload_by']}",
        ),
        _rss_row(
            raw,
            "memory: same, vs before after a tiny-model warm-up only (info)",
            "rss_before_tiny",
            None,
            "baseline: digits, langid, iris loaded and unloaded once (the old pre-level)",
        ),
        _rss_row(
            raw,
            "memory: RSS after unloading all vs after cycle 1 (leak check)",
            "rss_after_first_cycle",
            1.05,
            "baseline: every model loaded once, then all unloaded",
        ),
    ]


def memory(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Tracked bytes never exceed the budget under evictions; RSS returns after unloading."""
    models = {name: model(name) for name in NAMES}
    models["minilm"]["batch"] = models["langid"]["batch"] = BATCH
    config = write_config(ctx.workdir, "memory", models, memory_budget="300MiB")
    png = ctx.inputs.pngs[0].read_bytes()
    sentence = json.loads(ctx.inputs.text_bodies[1].read_text())["inputs"]
    raw: dict[str, Any] = {}
    with start_server(config, "memory") as server:
        _measure(_Run(ctx, server, png, sentence), raw)
    return _rows(raw), raw
