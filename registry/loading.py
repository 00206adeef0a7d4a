"""Loading models under the byte budget (owned by the lifecycle, registry/lifecycle.py).

- A model has at most one load task; the task belongs to this object, not to a request.
- A load is placed on a device (registry/memory/placement.py), reserves its estimated bytes
  there (the room, registry/memory/making_room.py, evicts for it), runs the loader in its
  own thread (or worker process) under `load_timeout`, then swaps the estimate for the
  measured size. Loads run in parallel up to `max_parallel_loads`.
- An offloaded model's load is a copy back from host memory (registry/memory/host_tier.py).
- A load the registry stops waiting for (timeout, model replaced, shutdown): in a worker
  process it is killed, and its bytes are released once the worker is reaped; in a thread
  (which cannot be killed) it keeps its bytes reserved until the thread really ends, and
  the model is not loaded again before that.
- Once loaded, a process model's worker is watched (registry/process/supervision.py, owned
  here: it loads a hot model again after its worker died).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry.abandoned import AbandonedThread
from registry.calls import Calls
from registry.config.schema import GENERATION_TASK, ServerSettings
from registry.errors import CapacityExceeded
from registry.events import EventBus, EventKind
from registry.failures import Failures
from registry.loaders import LoadContext, Model, load_model
from registry.memory.devices import Device, device_text
from registry.memory.holdings import Holdings, reload_seconds
from registry.memory.host_tier import let_go, restore_load
from registry.memory.making_room import Room
from registry.memory.placement import measured_charge, place_load
from registry.memory.sizes import measure_bytes
from registry.model_calls import dispose
from registry.plumbing import Plumbing
from registry.process.generating import ProcessGenerator
from registry.process.proxy import KILL_GRACE, WorkerLoad, isolation_of, load_in_worker
from registry.process.supervision import Supervision
from registry.slot import Slot
from registry.stats import Stats
from registry.threads import InferencePool, run_in_thread
from registry.units import format_bytes, format_duration

log = logging.getLogger("registry")


class Loads:
    """Starts loads and sees them through (see the module docstring)."""

    def __init__(
        self,
        settings: ServerSettings,
        base_dir: Path,
        pool: InferencePool,
        room: Room,
        calls: Calls,
        failures: Failures,
        plumbing: Plumbing,
    ) -> None:
        self._settings = settings
        self._base_dir = base_dir
        self._pool = pool
        self._room = room
        self._holdings: Holdings = room.holdings
        self._devices: Mapping[str, Device] = room.devices
        self._events: EventBus = room.events
        self._stats: Stats = room.stats
        self._calls = calls
        self._failures = failures
        self._plumbing = plumbing
        self._supervision = Supervision(room, self.start_load)
        self._load_limit = asyncio.Semaphore(settings.max_parallel_loads)
        self._loads: set[asyncio.Task[Any]] = set()  # every slot's load, retired ones too

    @property
    def supervision(self) -> Supervision:
        """The watch over the loaded models' workers."""
        return self._supervision

    def use_settings(self, settings: ServerSettings, base_dir: Path) -> None:
        """A reloaded models.yaml's server settings, for the loads that start from now on."""
        self._settings = settings
        self._base_dir = base_dir

    def limit_parallel(self, loads: int) -> None:
        """A new max_parallel_loads, for the loads that start from now on."""
        self._load_limit = asyncio.Semaphore(loads)

    def running(self) -> list[asyncio.Task[Any]]:
        """Loads running now (of retired slots too)."""
        return list(self._loads)

    def start_load(self, slot: Slot) -> None:
        """Start the model's load unless one runs (single flight) or an old thread still runs."""
        retired = slot.retirement.retired
        if slot.load_task is not None or self._plumbing.closing or retired or slot.abandoned:
            return
        task = self._plumbing.spawn(self._load(slot), name=f"load {slot.name}")
        slot.begin_load(task)
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)
        asked = device_text(slot.spec.device)
        extra = {"restore": True} if slot.model is not None else {}  # from host memory
        self._events.emit(
            EventKind.LOADING, slot.name, estimate_bytes=slot.estimate, device=asked, **extra
        )

    def retire(self, slot: Slot) -> None:
        """A slot the roster let go (registry/roster.py): its load stops, and it unloads
        after its last request."""
        if slot.load_task is not None:
            # Its waiters move to the replacement; its load-limit permit is freed now, its
            # bytes when the loader thread really ends (lifecycle's abandoned threads).
            slot.load_task.cancel()
        self._room.unload_when_idle(slot)

    async def _load(self, slot: Slot) -> BaseException | None:
        """Load one model; never raises (but for cancellation): the outcome is returned."""
        timeout = slot.spec.load_timeout or self._settings.load_timeout
        loaded = False  # the loader ran: a failure from here on cost a whole load
        try:
            async with self._load_limit:
                charge = await place_load(
                    slot,
                    self._holdings.budgets,
                    self._devices,
                    cost_of=reload_seconds,
                    freeing=self._room.freeing(),
                )
                await self._room.reserve(
                    slot, charge.nbytes, device=charge.device, host_bytes=charge.host_bytes
                )
                if self._plumbing.closing and not slot.waiting:  # shutdown began; nobody waits
                    self._holdings.release(slot)
                    raise asyncio.CancelledError
                if slot.model is not None:  # offloaded: a copy back, not a load from disk
                    loaded = True  # a measured size that finds no room is a failure, as below
                    await restore_load(self._room, slot, charge)
                    return None
                started = time.monotonic()
                isolation = isolation_of(slot.spec, slot.estimate, self._settings)
                slot.runs_in(isolation)
                # A worker times its own load and is killed at load_timeout: wait for that.
                outer = timeout + (KILL_GRACE * 3 if isolation == "process" else 0)
                model, measured_size = await self._run_loader(slot, outer, charge.placed)
                loaded = True
                seconds = time.monotonic() - started
                size = measured_size if measured_size is not None else charge.nbytes
                measured = measured_charge(model, charge, size, self._devices)
                await self._room.settle_size(slot, model, measured)
            self._loaded(slot, model, seconds)
            return None
        except CapacityExceeded as exc:
            if not loaded and slot.model is not None:  # no room on a GPU: it stays offloaded
                slot.restore_refused(exc.message)
                log.warning("cannot restore %s: %s", slot.name, exc.message)
                self._failures.record(slot, exc.message)
                return exc
            let_go(self._room, slot)
            if loaded:  # the measured size found no room: back off, do not load it per request
                self._failures.failed(slot, exc, timeout, self._settings.retry_backoff)
                return exc
            slot.no_room(exc.message, time.monotonic() + self._settings.retry_backoff.initial)
            log.warning("cannot load %s: %s", slot.name, exc.message)
            self._failures.record(slot, exc.message)
            return exc
        except asyncio.CancelledError:
            let_go(self._room, slot)
            slot.load_cancelled()
            raise
        except Exception as exc:
            let_go(self._room, slot)
            self._failures.failed(slot, exc, timeout, self._settings.retry_backoff)
            return exc
        finally:
            slot.load_ended()
            self._plumbing.notify()

    async def _run_loader(
        self, slot: Slot, seconds: float, placed: str | None
    ) -> tuple[Model, int | None]:
        """Run the loader in its thread. If we stop waiting, a worker's load is killed (its
        bytes go once it is reaped); a thread's load keeps its bytes until the thread ends."""
        records: list[AbandonedThread] = []
        handle = WorkerLoad() if slot.isolation == "process" else None
        job = run_in_thread(
            functools.partial(self._load_blocking, slot, handle, placed),
            name=f"load-{slot.name}",
            on_orphan=dispose,
            on_exit=lambda: self._reclaim(records[0]) if records else None,
        )
        try:
            return await asyncio.wait_for(asyncio.shield(job), seconds)
        except BaseException as exc:
            if job.done():  # the loader raised: its thread is ending, nothing is held
                self._holdings.release(slot)
                raise
            job.cancel()  # a result that comes later is an orphan: disposed of in the thread
            if isinstance(exc, TimeoutError):
                why = f"load timed out after {seconds:g}s (load_timeout)"
            elif slot.retirement.retired:
                replaced = slot.retirement.replacement is not None
                why = "replaced in models.yaml" if replaced else "removed from models.yaml"
            else:
                why = "shutdown"
            records.append(self._holdings.abandon(slot, "load", why))
            held = format_bytes(sum(self._holdings.budgets.holdings(slot).values()))
            if handle is not None:
                handle.end(why)  # its loader thread reaps the worker and ends: reclaim()
            text = (
                "stopped the load of %s (%s): its worker is killed; its %s are released once "
                "it is reaped"
                if handle is not None
                else "stopped waiting for the load of %s (%s); its %s stay reserved until "
                "the loader thread ends"
            )
            log.warning(text, slot.name, why, held)
            raise

    def _reclaim(self, record: AbandonedThread) -> None:
        """An abandoned loader thread has ended: its bytes go if nothing else holds them."""
        self._holdings.reclaim(record)
        self._plumbing.notify()

    def _load_blocking(
        self, slot: Slot, handle: WorkerLoad | None, placed: str | None
    ) -> tuple[Model, int | None]:
        ctx = LoadContext(slot.name, slot.spec, slot.source, self._base_dir, placed)
        if slot.isolation == "process":
            limit = slot.spec.load_timeout or self._settings.load_timeout
            kind = ProcessGenerator if slot.spec.task == GENERATION_TASK else None
            worker = load_in_worker(
                ctx, self._settings, load_timeout=limit, handle=handle, kind=kind
            )
            return worker, worker.size_bytes
        model = load_model(ctx)
        measured = measure_bytes(model)
        # A load creates ~100k long-lived objects; automatic full collections walking them
        # pause every thread for 20-120 ms. Freeze them; compact() collects when idle.
        # Collect first: garbage waiting for the collector now would be frozen with them and
        # kept for good under sustained traffic, where compact() never comes (one collection
        # of what is not frozen yet: the new model and what came since the last load).
        gc.collect()
        gc.freeze()
        return model, measured

    def _loaded(self, slot: Slot, model: Model, seconds: float) -> None:
        slot.loaded(model, self._pool.thread_for(slot.name), seconds)
        self._supervision.watch(slot)  # a worker that dies while idle is noticed
        self._holdings.touch(slot)
        self._room.measure_overhead(slot)  # the server's own context on a GPU, once
        self._calls.refresh_batcher(slot)
        log.info(
            "loaded %s (%s) in %s",
            slot.name,
            format_bytes(slot.size_bytes or 0),
            format_duration(seconds),
        )
        self._stats.of(slot.name).record_load(seconds)
        home = self._holdings.budgets.home(slot)
        self._events.emit(
            EventKind.LOADED, slot.name, bytes=slot.size_bytes, seconds=seconds, device=home
        )
        self._room.unload_when_idle(slot)  # retired, or an unload was asked for meanwhile
