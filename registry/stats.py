"""Counters and histograms the core keeps, per model, for the metrics endpoint.

Plain data: app/prometheus_text.py turns them into Prometheus families, so the core needs no
metrics library. Counts are kept by model name, so they survive a model's reload.
Everything is updated on the event loop's thread.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# Bucket upper bounds in seconds. Few on purpose: a scrape of 100 models stays small.
REQUEST_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30)
LOAD_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)
PHASES = ("load_wait", "queue", "inference")


@dataclass
class Histogram:
    """Observations in fixed buckets (upper bounds, plus +Inf), with their sum."""

    bounds: tuple[float, ...] = REQUEST_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        """How many values were observed."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, values <= it) for each bucket, ending with +Inf."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class Timing:
    """How long one request's inference call ran (set in the worker thread, or by a batch)."""

    inference: float | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call fn(*args), timing it."""
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.record(time.perf_counter() - started)

    def record(self, seconds: float) -> None:
        """The call took `seconds` (a batch's call, shared by its requests)."""
        self.inference = seconds


@dataclass
class ModelStats:
    """What happened to one model name since the server started."""

    requests: Counter[str] = field(default_factory=Counter)  # by outcome: "ok" or an error type
    duration: Histogram = field(default_factory=Histogram)
    phases: dict[str, Histogram] = field(
        default_factory=lambda: {phase: Histogram() for phase in PHASES}
    )
    hits: int = 0  # the model was loaded when the request arrived
    misses: int = 0  # the request waited for a load
    load_seconds: Histogram = field(default_factory=lambda: Histogram(LOAD_BUCKETS))
    unload_seconds: Histogram = field(default_factory=lambda: Histogram(LOAD_BUCKETS))
    loads: int = 0
    offloads: int = 0  # evicted from a GPU into host memory (the host-RAM tier)
    restores: int = 0  # copied back from host memory to a GPU
    restore_seconds: Histogram = field(default_factory=lambda: Histogram(LOAD_BUCKETS))
    failures: int = 0
    unloads: Counter[str] = field(default_factory=Counter)  # by UnloadReason value
    generated_tokens: int = 0  # text-generation: tokens generated, streamed or not
    first_token: Histogram = field(default_factory=Histogram)  # seconds to a stream's first token

    def record_load(self, seconds: float) -> None:
        """A load finished."""
        self.loads += 1
        self.load_seconds.observe(seconds)

    def record_offload(self) -> None:
        """The model went from its GPU into host memory."""
        self.offloads += 1

    def record_restore(self, seconds: float) -> None:
        """The model came back from host memory to a GPU in `seconds`."""
        self.restores += 1
        self.restore_seconds.observe(seconds)

    def record_failure(self) -> None:
        """A load failed, or found no room."""
        self.failures += 1

    def record_generation(self, tokens: int, first_token: float | None) -> None:
        """A generation stream ended after `tokens` tokens (its first after `first_token` s)."""
        self.generated_tokens += tokens
        if first_token is not None:
            self.first_token.observe(first_token)

    def record_unload(self, reason: str, seconds: float) -> None:
        """An unload finished."""
        self.unloads[reason] += 1
        self.unload_seconds.observe(seconds)


class Stats:
    """Per-model stats by name."""

    def __init__(self) -> None:
        self.models: dict[str, ModelStats] = {}

    def of(self, name: str) -> ModelStats:
        """The stats of `name`, created on first use."""
        stats = self.models.get(name)
        if stats is None:
            stats = self.models[name] = ModelStats()
        return stats

    def generated(self, name: str, tokens: int, first_token: float | None) -> None:
        """A generation on `name` ended: its tokens, and its time to first token if any."""
        self.of(name).record_generation(tokens, first_token)

    def request(
        self,
        name: str,
        outcome: str,
        *,
        load_wait: float,
        queue: float,
        inference: float,
        hit: bool | None,
    ) -> None:
        """Record one finished request; `hit` is None when it never got its model."""
        stats = self.of(name)
        stats.requests[outcome] += 1
        if hit is None:
            return
        if hit:
            stats.hits += 1
        else:
            stats.misses += 1
        stats.duration.observe(load_wait + queue + inference)
        stats.phases["load_wait"].observe(load_wait)
        stats.phases["queue"].observe(queue)
        stats.phases["inference"].observe(inference)
