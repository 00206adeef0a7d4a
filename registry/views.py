"""Typed views of the registry: what GET /models, /health/ready and /metrics are made of.

The core builds them on the event loop (a view is one reading, frozen); app/ reads them by
attribute: app/views_json.py turns them into the JSON clients see, app/prometheus_text.py into
Prometheus families. A view holds values, not presentation: timestamps are datetimes and
durations unrounded seconds; rounding, ISO text, HTTP statuses and what an anonymous caller
may see are app/'s decisions.

    RegistryView          ModelManager.snapshot(): the budget, the config, every model
      DeviceView          one device's budget, overhead, used and reserved bytes
      ModelView           ModelManager.describe(name), load(name), unload(name)
        BatchStats        a batched model's batches (Batcher.stats())
        WorkerView        a process model's worker
        Holding           what the budget holds for the model (absent outside a manager)
      AbandonedView       a thread the registry stopped waiting for
      ConfigRefusal       the last models.yaml edit that was refused
      SpareState          the spare worker (registry/process/spare.py), if one is kept
    Readiness             ModelManager.readiness(): hot models pending or failed, closing
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from registry.batching import BatchStats
from registry.loaders.interface import worker_of
from registry.memory.devices import device_text
from registry.slot import State

if TYPE_CHECKING:
    from registry.abandoned import AbandonedThread
    from registry.config.schema import BatchSpec, InputKind
    from registry.memory.device_budgets import DeviceBudgets
    from registry.memory.devices import Device
    from registry.memory.policy import Policy
    from registry.process.spare import SpareState
    from registry.slot import Slot


class BudgetState(enum.StrEnum):
    """Whether the loaded models fit the budget."""

    OK = "ok"
    RESTORING = "restoring"  # a reload lowered the budget: models unload until they fit


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A process model's worker process."""

    pid: int | None  # None once the worker has died or was stopped
    param_bytes: int
    private_bytes: int  # private dirty memory at the last measurement
    uss_bytes: int | None
    pss_bytes: int | None


@dataclass(frozen=True, slots=True)
class Holding:
    """What the budget holds for a model now, and when it may go."""

    eviction: Policy
    eviction_priority: float | None  # lower goes first; None while nothing is held
    held_bytes: int  # loaded, or reserved for a load, on its home device
    ttl_left_seconds: float | None  # until the idle TTL unloads it; None: no TTL, pinned, in use
    home: str | None = None  # the device whose budget it spends (None: it holds nothing)
    device_bytes: Mapping[str, int] | None = None  # bytes it holds on each device


@dataclass(frozen=True, slots=True)
class ModelView:
    """One model: its entry in models.yaml, its state and its numbers."""

    name: str
    task: str | None  # the pipeline task, or "loader:<ref>" for a custom loader
    state: State
    hot: bool
    pinned: bool
    size_bytes: int | None  # measured after a load, else the estimate
    size_measured: bool
    in_flight: int  # requests holding the model
    queued: int  # requests waiting for a load or for room
    load_count: int
    served: int
    abandoned_threads: int
    last_used: datetime | None
    load_seconds: float | None
    error: str | None
    input: InputKind
    source: str | None
    batch: BatchSpec | None
    batches: BatchStats | None  # None while no batcher runs
    idle_ttl: float | None
    description: str
    isolation: str | None  # where the last load ran, else where the entry asks for
    device: str  # the entry's `device`: cpu, cuda, cuda:N, mps or auto; a list as "cuda:1,cuda:0"
    device_resolved: str | None  # the device the last load ran on (None: no load yet, or
    # a model that does not tell: a plain callable)
    recycles: int
    worker_deaths: int
    worker: WorkerView | None  # a process model's worker while one runs
    holding: Holding | None  # None outside a manager (the Ray gateway's blank entries)


@dataclass(frozen=True, slots=True)
class AbandonedView:
    """A thread that outlived the wait for it (registry/abandoned.py)."""

    model: str
    kind: str  # "load" or "inference"
    why: str
    since: datetime
    retired: bool


@dataclass(frozen=True, slots=True)
class ConfigRefusal:
    """The last edit of models.yaml that was refused; the running registry was kept."""

    message: str
    problems: tuple[str, ...]
    at: datetime


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device's budget and what models hold there (the host is `cpu`)."""

    device: str  # cpu, cuda:0, ...
    kind: str  # host, simulated, nvml or torch: where its total memory comes from
    total_bytes: int  # the device's memory
    budget_bytes: int  # its whole budget, the fixed overhead included
    overhead_bytes: int  # what no model is charged for (the server's CUDA context)
    used_bytes: int  # held by models at home there, host parts of GPU models, reservations
    reserved_bytes: int  # reserved for loads in progress
    models: int  # models whose home is this device


@dataclass(frozen=True, slots=True)
class RegistryView:
    """The whole registry: the budget, the config in use, every model (by name)."""

    budget_bytes: int
    used_bytes: int  # held by loaded models or reserved for loads
    reserved_bytes: int  # reserved for loads in progress
    peak_used_bytes: int
    abandoned: tuple[AbandonedView, ...]  # oldest first
    unused_loads: int  # loads unloaded again before they served a request
    config_path: Path
    config_loaded_at: datetime
    config_error: ConfigRefusal | None
    eviction: Policy
    models: tuple[ModelView, ...]
    last_event_id: int
    spare_worker: SpareState | None = None  # the idle worker kept for the next process load
    devices: tuple[DeviceView, ...] = ()  # the host first, then each GPU

    @property
    def budget_state(self) -> BudgetState:
        """Over a limit only after a reload lowered it: models unload until they fit."""
        over = any(d.used_bytes > d.budget_bytes - d.overhead_bytes for d in self.devices)
        restoring = over or self.used_bytes > self.budget_bytes
        return BudgetState.RESTORING if restoring else BudgetState.OK

    @property
    def abandoned_threads(self) -> int:
        """Threads the registry stopped waiting for that still run."""
        return len(self.abandoned)


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether every hot model has loaded, and what is still pending or has failed."""

    closing: bool  # shutdown has begun
    pending: tuple[str, ...]  # hot models still loading (or not started)
    failed: Mapping[str, str | None]  # hot models whose load failed, with the error

    @property
    def ready(self) -> bool:
        """Serving: every hot model loaded and no shutdown begun."""
        return not self.pending and not self.failed and not self.closing


def model_view(slot: Slot, holding: Holding | None = None) -> ModelView:
    """The view of `slot` now; `holding` is the manager's part (the budget's)."""
    spec = slot.spec
    worker = _worker(slot.model)
    return ModelView(
        name=slot.name,
        task=spec.task or (f"loader:{spec.loader}" if spec.loader else None),
        state=slot.state,
        hot=spec.hot,
        pinned=spec.pinned,
        size_bytes=slot.size_bytes if slot.size_bytes is not None else slot.estimate,
        size_measured=slot.size_bytes is not None,
        in_flight=slot.leases,
        queued=slot.waiting,
        load_count=slot.stats.load_count,
        served=slot.stats.served,
        abandoned_threads=slot.abandoned,
        last_used=_datetime(slot.stats.last_used),
        load_seconds=slot.stats.load_seconds,
        error=slot.error,
        input=spec.input_kind,
        source=None if slot.source is None else str(slot.source),
        batch=spec.batch,
        batches=None if slot.batcher is None else slot.batcher.stats(),
        idle_ttl=spec.idle_ttl,
        description=spec.description,
        isolation="process" if worker is not None else slot.isolation or spec.isolation,
        device=device_text(spec.device),
        device_resolved=slot.device,
        recycles=slot.stats.recycles,
        worker_deaths=slot.stats.worker_deaths,
        worker=worker,
        holding=holding,
    )


def abandoned_view(record: AbandonedThread) -> AbandonedView:
    """The view of one abandoned thread."""
    return AbandonedView(
        model=record.slot.name,
        kind=record.kind,
        why=record.why,
        since=datetime.fromtimestamp(record.since, UTC),
        retired=record.slot.retirement.retired,
    )


def _worker(model: object) -> WorkerView | None:
    """A process model's worker; None for a model in the server's process."""
    worker = worker_of(model)
    if worker is None:
        return None
    return WorkerView(
        pid=worker.pid if worker.alive else None,
        param_bytes=worker.param_bytes,
        private_bytes=worker.private_bytes,
        uss_bytes=worker.memory.get("uss"),
        pss_bytes=worker.memory.get("pss"),
    )


def _datetime(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


def device_views(
    budgets: DeviceBudgets[Slot], devices: Mapping[str, Device], loading: list[Slot]
) -> tuple[DeviceView, ...]:
    """Each device's budget and use; `loading` are the loads in progress."""
    rows = []
    for totals in budgets.totals():
        budget = budgets.budget(totals.device)
        device = devices.get(totals.device)
        rows.append(
            DeviceView(
                device=totals.device,
                kind=device.kind if device is not None else "host",
                total_bytes=device.total if device is not None else totals.budget,
                budget_bytes=totals.budget,
                overhead_bytes=totals.overhead,
                used_bytes=totals.used,
                reserved_bytes=sum(budget.size_of(s) for s in loading),
                models=totals.models,
            )
        )
    return tuple(rows)
