"""The JSON of the registry's views (registry/views.py), decided in one place.

GET /models, GET /models/{name}, the admin and V2 repository answers, /health/ready and the
Ray replicas' reports are built here: the keys and their order, the rounding, the ISO text
of timestamps and the words of readiness. What anonymous callers may see is decided after,
on this JSON (app/visibility.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from registry.views import (
    AbandonedView,
    ConfigRefusal,
    DeviceView,
    Holding,
    ModelView,
    Readiness,
    RegistryView,
    WorkerView,
)


def registry_json(view: RegistryView) -> dict[str, Any]:
    """GET /models."""
    return {
        "budget_bytes": view.budget_bytes,
        "used_bytes": view.used_bytes,
        "reserved_bytes": view.reserved_bytes,
        "peak_used_bytes": view.peak_used_bytes,
        "budget_state": view.budget_state.value,
        "abandoned_threads": view.abandoned_threads,
        "abandoned": [_abandoned(a) for a in view.abandoned],
        "unused_loads": view.unused_loads,
        "config_path": str(view.config_path),
        "config_loaded_at": view.config_loaded_at.isoformat(timespec="seconds"),
        "config_error": None if view.config_error is None else _refusal(view.config_error),
        "eviction": view.eviction,
        "models": [model_json(m) for m in view.models],
        "last_event_id": view.last_event_id,
        "spare_worker": None
        if view.spare_worker is None
        else {
            "pid": view.spare_worker.pid,
            "state": view.spare_worker.state,
            "private_bytes": view.spare_worker.private_bytes,
        },
        "devices": [_device(d) for d in view.devices],
    }


def _device(view: DeviceView) -> dict[str, Any]:
    """One device's budget and use (GET /models' `devices`; the host is `cpu`)."""
    return {
        "device": view.device,
        "kind": view.kind,
        "total_bytes": view.total_bytes,
        "budget_bytes": view.budget_bytes,
        "overhead_bytes": view.overhead_bytes,
        "used_bytes": view.used_bytes,
        "reserved_bytes": view.reserved_bytes,
        "models": view.models,
    }


def model_json(view: ModelView) -> dict[str, Any]:
    """GET /models/{name} (and each entry of GET /models)."""
    body: dict[str, Any] = {
        "name": view.name,
        "task": view.task,
        "state": view.state.value,
        "hot": view.hot,
        "pinned": view.pinned,
        "size_bytes": view.size_bytes,
        "size_measured": view.size_measured,
        "in_flight": view.in_flight,
        "queued": view.queued,
        "load_count": view.load_count,
        "served": view.served,
        "abandoned_threads": view.abandoned_threads,
        "last_used": _iso(view.last_used),
        "load_seconds": None if view.load_seconds is None else round(view.load_seconds, 4),
        "error": view.error,
        "input": view.input,
        "source": view.source,
        "batch": None if view.batch is None else view.batch.model_dump(),
        "batches": None
        if view.batches is None
        else {"batches": view.batches.batches, "inputs": view.batches.inputs},
        "idle_ttl": view.idle_ttl,
        "description": view.description,
        "isolation": view.isolation,
        "device": view.device,
        "device_resolved": view.device_resolved,
        "recycles": view.recycles,
        "worker_deaths": view.worker_deaths,
    }
    if view.worker is not None:
        body.update(_worker(view.worker))
    if view.holding is not None:
        body.update(_holding(view.holding))
    return body


def readiness_json(view: Readiness) -> dict[str, Any]:
    """The body of /health/ready (200 when `view.ready`, else 503)."""
    status = "shutting down" if view.closing else ("ready" if view.ready else "starting")
    return {"status": status, "pending": list(view.pending), "failed": dict(view.failed)}


def eviction_priority(holding: Holding) -> float | None:
    """The priority as shown (GET /models and /metrics): six decimals are plenty."""
    priority = holding.eviction_priority
    return None if priority is None else round(priority, 6)


def _holding(holding: Holding) -> dict[str, Any]:
    ttl_left = holding.ttl_left_seconds
    return {
        "eviction": holding.eviction,
        "eviction_priority": eviction_priority(holding),
        "held_bytes": holding.held_bytes,
        "ttl_left_seconds": None if ttl_left is None else round(ttl_left, 1),
        "home_device": holding.home,
        "device_bytes": dict(holding.device_bytes or {}),
    }


def _worker(worker: WorkerView) -> dict[str, Any]:
    return {
        "worker_pid": worker.pid,
        "param_bytes": worker.param_bytes,
        "worker_private_bytes": worker.private_bytes,
        "worker_uss_bytes": worker.uss_bytes,
        "worker_pss_bytes": worker.pss_bytes,
    }


def _abandoned(view: AbandonedView) -> dict[str, Any]:
    return {
        "model": view.model,
        "kind": view.kind,
        "why": view.why,
        "since": _iso(view.since),
        "retired": view.retired,
    }


def _refusal(refusal: ConfigRefusal) -> dict[str, Any]:
    return {
        "message": refusal.message,
        "problems": list(refusal.problems),
        "at": refusal.at.isoformat(timespec="seconds"),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds")
