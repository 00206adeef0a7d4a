"""GET /metrics: Prometheus text, read from the manager at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.routes import Manager
from registry.manager import ModelManager
from registry.slot import State

router = APIRouter()


class RegistryCollector(Collector):
    """Budget and per-model gauges and counters from one manager snapshot."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        """One consistent snapshot per scrape."""
        snapshot = self.manager.snapshot()
        yield GaugeMetricFamily(
            "model_registry_budget_bytes", "Memory budget in bytes", value=snapshot["budget_bytes"]
        )
        yield GaugeMetricFamily(
            "model_registry_used_bytes", "Bytes held or reserved", value=snapshot["used_bytes"]
        )
        yield GaugeMetricFamily(
            "model_registry_abandoned_threads",
            "Load or predict threads still running after the registry stopped waiting for them",
            value=snapshot["abandoned_threads"],
        )
        yield GaugeMetricFamily(
            "model_registry_budget_restoring",
            "1 while models are unloaded to fit a lowered memory budget",
            value=1.0 if snapshot["budget_state"] == "restoring" else 0.0,
        )
        state = GaugeMetricFamily(
            "model_registry_model_state",
            "1 for the model's current state",
            labels=["model", "state"],
        )
        size = GaugeMetricFamily("model_registry_model_bytes", "Model size", labels=["model"])
        in_flight = GaugeMetricFamily(
            "model_registry_in_flight", "Requests using the model", labels=["model"]
        )
        queued = GaugeMetricFamily("model_registry_queued", "Requests waiting", labels=["model"])
        loads = CounterMetricFamily("model_registry_loads", "Completed loads", labels=["model"])
        served = CounterMetricFamily("model_registry_served", "Requests served", labels=["model"])
        recycles = CounterMetricFamily(
            "model_registry_worker_recycles", "Leaking workers recycled", labels=["model"]
        )
        deaths = CounterMetricFamily(
            "model_registry_worker_deaths", "Workers that died or were killed", labels=["model"]
        )
        for entry in snapshot["models"]:
            name = entry["name"]
            for value in State:
                state.add_metric([name, value.value], 1.0 if entry["state"] == value.value else 0.0)
            size.add_metric([name], float(entry["size_bytes"] or 0))
            in_flight.add_metric([name], entry["in_flight"])
            queued.add_metric([name], entry["queued"])
            loads.add_metric([name], entry["load_count"])
            served.add_metric([name], entry["served"])
            recycles.add_metric([name], entry["recycles"])
            deaths.add_metric([name], entry["worker_deaths"])
        yield from (state, size, in_flight, queued, loads, served, recycles, deaths)


@router.get("/metrics", include_in_schema=False)
async def metrics(manager: Manager) -> Response:
    """Prometheus exposition of the registry's state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RegistryCollector(manager))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
