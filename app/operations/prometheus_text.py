"""The Prometheus text of GET /metrics, read from the manager's state and stats at scrape time.

The core keeps plain counters and histograms (registry/stats.py); this module is the only
place that knows Prometheus. Names follow its conventions (`_bytes`, `_seconds`, `_total`).
metrics.py (the route) imports it at the first scrape, so that prometheus_client is not part
of the server's startup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.errors import status_of
from app.views_json import eviction_priority
from registry.errors import RegistryError
from registry.events import UnloadReason
from registry.manager import ModelManager
from registry.slot import State
from registry.stats import PHASES, Histogram
from registry.views import BudgetState, RegistryView

P = "model_registry_"


def _status_classes() -> dict[str, str]:
    """Outcome (an error type) -> HTTP status class, from the one error mapping."""
    classes = {"ok": "2xx", "cancelled": "4xx", "internal": "5xx"}
    pending: list[type[RegistryError]] = [RegistryError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        classes.setdefault(cls.kind, f"{status_of(cls) // 100}xx")
    return classes


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if b == float("inf") else repr(b), c) for b, c in histogram.cumulative()]


class RegistryCollector(Collector):
    """Budget, pool and per-model figures from one manager snapshot."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self.status_classes = _status_classes()

    def collect(self) -> Iterator[Metric]:
        """One consistent snapshot per scrape."""
        manager = self.manager
        snapshot = manager.snapshot()
        yield from self._server(snapshot)
        yield from self._models(snapshot)
        yield from self._stats(snapshot)

    def _server(self, snapshot: RegistryView) -> Iterator[Metric]:
        pool = self.manager.pool
        gauges = [
            ("budget_bytes", "Memory budget in bytes", snapshot.budget_bytes),
            (
                "used_bytes",
                "Bytes held by loaded models or reserved for loads",
                snapshot.used_bytes,
            ),
            ("reserved_bytes", "Bytes reserved for loads in progress", snapshot.reserved_bytes),
            (
                "peak_used_bytes",
                "The most bytes ever held or reserved at once",
                snapshot.peak_used_bytes,
            ),
            ("inference_workers", "Inference calls that may run at once", pool.workers),
            ("inference_busy", "Inference calls running now", min(pool.pending, pool.workers)),
            ("inference_pending", "Inference calls submitted and not finished", pool.pending),
            (
                "abandoned_threads",
                "Worker threads still running a load or call the registry gave up on",
                snapshot.abandoned_threads,
            ),
            ("event_subscribers", "Open GET /events streams", self.manager.events.subscribers),
            (
                "budget_restoring",
                "1 while models are unloaded to fit a lowered memory budget",
                1.0 if snapshot.budget_state is BudgetState.RESTORING else 0.0,
            ),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(P + name, doc, value=float(value))
        yield CounterMetricFamily(
            P + "events", "Model events emitted", value=float(self.manager.events.last_id)
        )
        yield from _devices(snapshot)
        policy = GaugeMetricFamily(
            P + "eviction_policy", "1 for the eviction policy in use", labels=["policy"]
        )
        policy.add_metric([snapshot.eviction], 1.0)
        yield policy

    def _models(self, snapshot: RegistryView) -> Iterator[Metric]:
        priority = GaugeMetricFamily(
            P + "eviction_priority",
            "Eviction priority of each held model (lower goes first)",
            labels=["model"],
        )
        state = GaugeMetricFamily(
            P + "model_state", "1 for the model's current state", labels=["model", "state"]
        )
        size = GaugeMetricFamily(
            P + "model_bytes", "Measured size once loaded, else the estimate", labels=["model"]
        )
        measured = GaugeMetricFamily(
            P + "model_measured_bytes",
            "Measured size of the last load (0 before one)",
            labels=["model"],
        )
        held = GaugeMetricFamily(
            P + "model_held_bytes", "Bytes the budget holds for the model now", labels=["model"]
        )
        in_flight = GaugeMetricFamily(P + "in_flight", "Requests using the model", labels=["model"])
        queued = GaugeMetricFamily(P + "queued", "Requests waiting for the model", labels=["model"])
        served = CounterMetricFamily(
            P + "served", "Requests served by the current version", labels=["model"]
        )
        recycles = CounterMetricFamily(
            P + "worker_recycles", "Leaking workers recycled", labels=["model"]
        )
        deaths = CounterMetricFamily(
            P + "worker_deaths", "Workers that died or were killed", labels=["model"]
        )
        for entry in snapshot.models:
            name = entry.name
            for value in State:
                state.add_metric([name, value.value], 1.0 if entry.state is value else 0.0)
            size.add_metric([name], float(entry.size_bytes or 0))
            measured.add_metric(
                [name], float(entry.size_bytes or 0) if entry.size_measured else 0.0
            )
            holding = entry.holding
            held.add_metric([name], float(holding.held_bytes if holding is not None else 0))
            in_flight.add_metric([name], entry.in_flight)
            queued.add_metric([name], entry.queued)
            served.add_metric([name], entry.served)
            rank = None if holding is None else eviction_priority(holding)
            if rank is not None:
                priority.add_metric([name], rank)
            recycles.add_metric([name], entry.recycles)
            deaths.add_metric([name], entry.worker_deaths)
        yield from (state, size, measured, held, in_flight, queued, served, priority)
        yield from (recycles, deaths)

    def _stats(self, snapshot: RegistryView) -> Iterator[Metric]:
        current = {entry.name for entry in snapshot.models}
        stats = self.manager.stats.models
        requests = CounterMetricFamily(
            P + "requests", "Requests by outcome", labels=["model", "status", "error"]
        )
        hits = CounterMetricFamily(
            P + "cache_hits", "Requests that found their model loaded", labels=["model"]
        )
        misses = CounterMetricFamily(
            P + "cache_misses", "Requests that waited for a load", labels=["model"]
        )
        loads = CounterMetricFamily(P + "loads", "Completed loads", labels=["model"])
        offloads = CounterMetricFamily(
            P + "offloads",
            "Evictions from a GPU that kept the model in host memory (the host-RAM tier)",
            labels=["model"],
        )
        restores = CounterMetricFamily(
            P + "restores", "Copies back from host memory to a GPU", labels=["model"]
        )
        failures = CounterMetricFamily(
            P + "load_failures", "Failed loads (errors, timeouts, no room)", labels=["model"]
        )
        evictions = CounterMetricFamily(
            P + "evictions", "Unloads by reason", labels=["model", "reason"]
        )
        duration = HistogramMetricFamily(
            P + "request_duration_seconds",
            "Request time in the registry: load wait + queue + inference",
            labels=["model"],
        )
        phases = HistogramMetricFamily(
            P + "request_phase_seconds",
            "Request time by phase: load_wait, queue, inference",
            labels=["model", "phase"],
        )
        load_time = HistogramMetricFamily(
            P + "load_duration_seconds", "Time to load a model", labels=["model"]
        )
        unload_time = HistogramMetricFamily(
            P + "unload_duration_seconds", "Time to unload a model", labels=["model"]
        )
        restore_time = HistogramMetricFamily(
            P + "restore_duration_seconds",
            "Time to copy a model back from host memory to a GPU",
            labels=["model"],
        )
        generated = CounterMetricFamily(
            P + "generated_tokens", "Tokens generated by text-generation streams", labels=["model"]
        )
        first_token = HistogramMetricFamily(
            P + "time_to_first_token_seconds",
            "Text generation: from the model's lease to a stream's first token",
            labels=["model"],
        )
        for name in sorted(current | set(stats)):
            model = stats.get(name)
            if model is None:
                evictions.add_metric([name, UnloadReason.LRU.value], 0.0)
                continue
            for outcome, count in sorted(model.requests.items()):
                status = self.status_classes.get(outcome, "5xx")
                requests.add_metric([name, status, "none" if outcome == "ok" else outcome], count)
            hits.add_metric([name], model.hits)
            misses.add_metric([name], model.misses)
            loads.add_metric([name], model.loads)
            offloads.add_metric([name], model.offloads)
            restores.add_metric([name], model.restores)
            failures.add_metric([name], model.failures)
            for reason in UnloadReason:  # a reason appears once it happened (lru always)
                if model.unloads[reason.value] or reason is UnloadReason.LRU:
                    evictions.add_metric([name, reason.value], model.unloads[reason.value])
            duration.add_metric([name], _buckets(model.duration), model.duration.total)
            for phase in PHASES:
                histogram = model.phases[phase]
                phases.add_metric([name, phase], _buckets(histogram), histogram.total)
            for family, histogram in (
                (load_time, model.load_seconds),
                (unload_time, model.unload_seconds),
                (restore_time, model.restore_seconds),
            ):
                if histogram.count:  # a model that never loaded (unloaded) has no histogram
                    family.add_metric([name], _buckets(histogram), histogram.total)
            if model.generated_tokens or model.first_token.count:  # generation models
                generated.add_metric([name], model.generated_tokens)
                histogram = model.first_token
                first_token.add_metric([name], _buckets(histogram), histogram.total)
        yield from (requests, hits, misses, loads, failures, evictions, offloads, restores)
        yield from (duration, phases, load_time, unload_time, restore_time)
        yield from (generated, first_token)


class Collected(Collector):
    """Families already read (on the event loop), to be formatted elsewhere."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        """The families as read."""
        return iter(self.families)


async def exposition(manager: ModelManager) -> tuple[bytes, str]:
    """Prometheus exposition: the registry's figures and the standard process collectors;
    the body and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    # Read the manager's state on the loop (it is not thread-safe), format it in a thread:
    # formatting 100 models' histograms takes long enough to delay other requests.
    registry.register(Collected(list(RegistryCollector(manager).collect())))
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    body = await asyncio.to_thread(generate_latest, registry)
    return body, CONTENT_TYPE_LATEST


def _devices(snapshot: RegistryView) -> Iterator[Metric]:
    """Per-device gauges, labelled by device (cpu, cuda:0, ...)."""
    families = [
        ("device_budget_bytes", "Each device's memory budget", "budget_bytes"),
        ("device_used_bytes", "Bytes held or reserved on each device", "used_bytes"),
        ("device_reserved_bytes", "Bytes reserved for loads on each device", "reserved_bytes"),
        (
            "device_overhead_bytes",
            "Bytes of each device's budget no model is charged for (the server's CUDA context)",
            "overhead_bytes",
        ),
        ("device_total_bytes", "Each device's memory", "total_bytes"),
        ("device_models", "Models whose home is each device", "models"),
    ]
    for name, doc, field in families:
        family = GaugeMetricFamily(P + name, doc, labels=["device"])
        for device in snapshot.devices:
            family.add_metric([device.device], float(getattr(device, field)))
        yield family
