"""Loading and unloading models under the byte budget (the manager's machinery).

- A model has at most one load task; the task belongs to this object, not to a request.
- A load reserves its estimated bytes first, evicting idle models in the eviction policy's
  order (registry/memory/policy.py), only as many as the room needs, and waiting at most
  `capacity_wait` when everything else is in use or pinned; it runs the loader in its own
  thread under `load_timeout`, then swaps the estimate for the measured size. The tracked
  total never exceeds the budget.
- Loads run in parallel (up to `max_parallel_loads`) only while they fit in free room: a
  load that must evict waits until no other load is running, so that load's model serves
  its waiting requests first and the victims are chosen from what is really idle
  (concurrent clients must not cost more loads than one client would). Loads take room in
  the order they asked for it, so that wait ends with the loads already running.
- An unload runs in a thread and releases the bytes when the model is really gone.
- Reserving, choosing victims and unloading live in registry/memory/making_room.py (a base class).
- A load the registry stops waiting for (timeout, model replaced, shutdown): in a worker
  process it is killed, and its bytes are released once the worker is reaped; in a thread
  (which cannot be killed) it keeps its bytes reserved until the thread really ends, and the
  model is not loaded again before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from registry.abandoned import Abandoned, AbandonedThread
from registry.batching import Batcher
from registry.config.devices import device_limits
from registry.config.schema import ServerSettings
from registry.drain import Drain
from registry.errors import CapacityExceeded, InferenceTimeout, ModelTooLarge
from registry.events import EventBus, EventKind
from registry.loaders import LoadContext, Model, load_model
from registry.memory.budget import ByteBudget
from registry.memory.device_budgets import DeviceBudgets
from registry.memory.devices import CPU, Device, device_text, host_device
from registry.memory.gpu_charges import measure_overhead
from registry.memory.host_tier import let_go, restore_load
from registry.memory.making_room import Room
from registry.memory.placement import measured_charge, place_load
from registry.memory.sizes import measure_bytes
from registry.process.proxy import (
    KILL_GRACE,
    ProcessModel,
    WorkerLoad,
    isolation_of,
    load_in_worker,
)
from registry.process.supervision import watch as watch_worker
from registry.slot import Slot, State
from registry.stats import Stats, Timing
from registry.stuck_calls import Health, dispose, predict_json
from registry.threads import InferencePool, ModelThread, run_in_thread
from registry.units import format_bytes, format_duration

log = logging.getLogger("registry")


class Lifecycle(Room):
    """Loads, unloads and the budget; everything runs on the event loop's thread."""

    def __init__(
        self,
        settings: ServerSettings,
        base_dir: Path,
        pool: InferencePool,
        devices: Sequence[Device] | None = None,
    ) -> None:
        self.settings = settings
        self.base_dir = base_dir
        self.pool = pool
        # The devices are discovered once (the manager passes config_devices(config));
        # each has its own budget, and `budget` is the host's (registry/memory/device_budgets.py).
        found = list(devices) if devices is not None else [host_device()]
        self.devices: dict[str, Device] = {device.name: device for device in found}
        self.budgets: DeviceBudgets[Slot] = DeviceBudgets(
            self._limits(), settings.eviction, self.reload_seconds
        )
        self.budget: ByteBudget[Slot] = self.budgets.budget(CPU)
        self.overhead_measured: set[str] = set()  # GPUs whose server overhead is known
        self._reserving: set[Slot] = set()  # loads inside reserve(), waiting for room
        # Loads waiting for room in the order they asked (making_room.py), with the device they
        # wait on; True: it cannot make room now (nothing idle enough to evict), so it does
        # not hold up those behind it.
        self._in_line: dict[Slot, tuple[str, bool]] = {}
        self.load_limit = asyncio.Semaphore(settings.max_parallel_loads)
        self._closing = False
        self.drain = Drain(self.notify)
        self.peak_used = 0
        self.events = EventBus()
        self.stats = Stats()
        self.unused_loads = 0  # loads unloaded again before they served a single request
        self.abandoned = Abandoned()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loads: set[asyncio.Task[Any]] = set()  # every slot's load, retired ones too
        self._changed = asyncio.Event()
        self.health = Health(self)

    # ------------------------------------------------------------- what it owns

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: no load starts from then on."""
        return self._closing

    def begin_closing(self) -> None:
        """Shutdown has begun."""
        self._closing = True

    def use_settings(self, settings: ServerSettings, base_dir: Path) -> None:
        """A reloaded models.yaml's server settings, for the loads that start from now on."""
        self.settings = settings
        self.base_dir = base_dir

    def apply_limits(self, changed: set[str]) -> None:
        """After a reload's model changes: a new parallel-load limit or budget if they
        changed, then unloads until the total fits a lowered budget."""
        if "max_parallel_loads" in changed:
            self.load_limit = asyncio.Semaphore(self.settings.max_parallel_loads)
        if changed & {"memory_budget", "device_budgets"}:
            for device, limit in self._limits().items():
                self.budgets.set_limit(device, limit)
        self.enforce_limit()

    def _limits(self) -> dict[str, int]:
        return device_limits(self.settings, list(self.devices.values()))

    def record_peak(self) -> None:
        """Remember the most bytes ever held or reserved at once."""
        self.peak_used = max(self.peak_used, self.budget.used)  # the host's

    def load_tasks(self) -> list[asyncio.Task[Any]]:
        """Loads running now (of retired slots too)."""
        return list(self._loads)

    # ------------------------------------------------------------------ plumbing

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start a task that this object keeps referenced until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def notify(self) -> None:
        """Wake everything waiting for a state change."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, seconds: float | None) -> None:
        """Wait for the next state change, at most `seconds`."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    def predict_timeout(self, slot: Slot) -> float:
        """The model's predict_timeout, else the server's."""
        return slot.spec.predict_timeout or self.settings.predict_timeout

    def busy_eta(self, slot: Slot) -> float:
        """Seconds until a busy model probably has room for one more request."""
        per_call = slot.stats.infer_seconds or 0.05
        return math.ceil(per_call * (slot.waiting + slot.leases) / self.pool.workers + 0.5)

    def load_eta(self, slot: Slot) -> float:
        """Seconds until the model is probably loaded (its last load time, else a guess)."""
        seconds = slot.stats.load_seconds
        if seconds is not None:
            return math.ceil(seconds + 0.5)
        return math.ceil(2 + (slot.estimate or 0) / 200e6)  # imports, then ~200 MB/s

    # ------------------------------------------------------------------- loading

    def start_load(self, slot: Slot) -> None:
        """Start the model's load unless one runs (single flight) or an old thread still runs."""
        retired = slot.retirement.retired
        if slot.load_task is not None or self.closing or retired or slot.abandoned:
            return
        task = self.spawn(self._load(slot), name=f"load {slot.name}")
        slot.begin_load(task)
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)
        asked = device_text(slot.spec.device)
        extra = {"restore": True} if slot.model is not None else {}  # from host memory
        self.events.emit(
            EventKind.LOADING, slot.name, estimate_bytes=slot.estimate, device=asked, **extra
        )

    def retire(self, slot: Slot) -> None:
        """A slot the roster let go (registry/roster.py): its load stops, and it unloads
        after its last request."""
        if slot.load_task is not None:
            # Its waiters move to the replacement; its load-limit permit is freed now, its
            # bytes when the loader thread really ends (lifecycle's abandoned threads).
            slot.load_task.cancel()
        self.unload_when_idle(slot)

    async def _load(self, slot: Slot) -> BaseException | None:
        """Load one model; never raises (but for cancellation): the outcome is returned."""
        timeout = slot.spec.load_timeout or self.settings.load_timeout
        loaded = False  # the loader ran: a failure from here on cost a whole load
        try:
            async with self.load_limit:
                charge = await place_load(
                    slot,
                    self.budgets,
                    self.devices,
                    cost_of=self.reload_seconds,
                    freeing=self._unloading(),
                )
                await self.reserve(
                    slot, charge.nbytes, device=charge.device, host_bytes=charge.host_bytes
                )
                if self.closing and not slot.waiting:  # shutdown began; nobody waits for it
                    self.budgets.release(slot)
                    raise asyncio.CancelledError
                if slot.model is not None:  # offloaded: a copy back, not a load from disk
                    loaded = True  # a measured size that finds no room is a failure, as below
                    await restore_load(self, slot, charge)
                    return None
                started = time.monotonic()
                isolation = isolation_of(slot.spec, slot.estimate, self.settings)
                slot.runs_in(isolation)
                # A worker times its own load and is killed at load_timeout: wait for that.
                outer = timeout + (KILL_GRACE * 3 if isolation == "process" else 0)
                model, measured_size = await self._run_loader(slot, outer, charge.placed)
                loaded = True
                seconds = time.monotonic() - started
                size = measured_size if measured_size is not None else charge.nbytes
                measured = measured_charge(model, charge, size, self.devices)
                await self.settle_size(slot, model, measured)
            self._loaded(slot, model, seconds)
            return None
        except CapacityExceeded as exc:
            if not loaded and slot.model is not None:  # no room on a GPU: it stays offloaded
                slot.restore_refused(exc.message)
                log.warning("cannot restore %s: %s", slot.name, exc.message)
                self._record_failure(slot, exc.message)
                return exc
            let_go(self, slot)
            if loaded:  # the measured size found no room: back off, do not load it per request
                self.failed(slot, exc, timeout)
                return exc
            slot.no_room(exc.message, time.monotonic() + self.settings.retry_backoff.initial)
            log.warning("cannot load %s: %s", slot.name, exc.message)
            self._record_failure(slot, exc.message)
            return exc
        except asyncio.CancelledError:
            let_go(self, slot)
            slot.load_cancelled()
            raise
        except Exception as exc:
            let_go(self, slot)
            self.failed(slot, exc, timeout)
            return exc
        finally:
            slot.load_ended()
            self.notify()

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
            on_exit=lambda: self.reclaim(records[0]) if records else None,
        )
        try:
            return await asyncio.wait_for(asyncio.shield(job), seconds)
        except BaseException as exc:
            if job.done():  # the loader raised: its thread is ending, nothing is held
                self.budgets.release(slot)
                raise
            job.cancel()  # a result that comes later is an orphan: disposed of in the thread
            if isinstance(exc, TimeoutError):
                why = f"load timed out after {seconds:g}s (load_timeout)"
            elif slot.retirement.retired:
                replaced = slot.retirement.replacement is not None
                why = "replaced in models.yaml" if replaced else "removed from models.yaml"
            else:
                why = "shutdown"
            records.append(self.abandoned.add(slot, "load", why))
            held = format_bytes(sum(self.budgets.holdings(slot).values()))
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

    def reclaim(self, record: AbandonedThread) -> None:
        """An abandoned thread has ended: give back its model's bytes if nothing else holds them."""
        slot = record.slot
        last = self.abandoned.ended(record)
        idle = slot.state in (State.UNLOADED, State.FAILED) and slot.load_task is None
        if last and idle:
            freed = sum(self.budgets.release(slot).values())
            log.info(
                "the abandoned %s thread of %s ended; released %s",
                record.kind,
                slot.name,
                format_bytes(freed),
            )
        self.notify()

    def _load_blocking(
        self, slot: Slot, handle: WorkerLoad | None, placed: str | None
    ) -> tuple[Model, int | None]:
        ctx = LoadContext(slot.name, slot.spec, slot.source, self.base_dir, placed)
        if slot.isolation == "process":
            limit = slot.spec.load_timeout or self.settings.load_timeout
            worker = load_in_worker(ctx, self.settings, load_timeout=limit, handle=handle)
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
        slot.loaded(model, self.pool.thread_for(slot.name), seconds)
        if isinstance(model, ProcessModel):
            watch_worker(self, slot, model)  # a worker that dies while idle is noticed
        self.budgets.touch(slot)
        measure_overhead(self, slot)  # the server's own context on a GPU, once
        self.refresh_batcher(slot)
        log.info(
            "loaded %s (%s) in %s",
            slot.name,
            format_bytes(slot.size_bytes or 0),
            format_duration(seconds),
        )
        self.stats.of(slot.name).record_load(seconds)
        home = self.budgets.home(slot)
        self.events.emit(
            EventKind.LOADED, slot.name, bytes=slot.size_bytes, seconds=seconds, device=home
        )
        self.unload_when_idle(slot)  # retired, or an unload was asked for meanwhile

    def refresh_batcher(self, slot: Slot) -> None:
        """(Re)build the batcher from the entry's `batch:` (queued requests keep theirs)."""
        batch = slot.spec.batch
        if batch is None or slot.model is None:
            slot.use_batcher(None)
            return
        batcher = Batcher(
            functools.partial(self.run_predict, slot, slot.model, slot.thread),
            max_size=batch.max_size,
            max_wait=batch.max_wait_ms / 1000,
        )
        slot.use_batcher(batcher)

    def run_predict(
        self,
        slot: Slot,
        model: Model,
        thread: ModelThread | None,
        inputs: list[Any],
        parameters: Mapping[str, Any],
        *,
        timing: Timing | None = None,
    ) -> asyncio.Task[list[Any]]:
        """One predict call on the model's thread, bounded by its predict_timeout."""
        timeout = self.predict_timeout(slot)
        call = (predict_json,) if timing is None else (timing.run, predict_json)
        job = self.pool.submit(
            *call,
            model,
            inputs,
            dict(parameters),
            thread=thread,
            timeout=timeout,
            on_stuck=functools.partial(self.health.stuck, slot, model, thread, timeout),
        )
        # A request cut off by the end of the drain (answered 503) no longer reads its call's
        # outcome (a worker ended under it raises WorkerDied): it is read here, not logged.
        job.add_done_callback(_outcome_read)
        return job

    def failed(self, slot: Slot, exc: BaseException, timeout: float) -> None:
        """Mark the model failed after `exc`; the next load waits for the backoff."""
        if isinstance(exc, TimeoutError):
            error = f"load timed out after {timeout:g}s (load_timeout)"
        elif isinstance(exc, (ModelTooLarge, CapacityExceeded)):
            error = exc.message
        elif isinstance(exc, InferenceTimeout):
            error = f"predict timed out after {exc.seconds:g}s (predict_timeout)"
        else:
            error = f"{type(exc).__name__}: {exc}"
        delay = slot.fail(error, self.settings.retry_backoff, exc)
        log.error(
            "%s %s: %s (attempt %d, next try in %s)",
            "marked failed" if isinstance(exc, InferenceTimeout) else "failed to load",
            slot.name,
            slot.error,
            slot.failures,
            format_duration(delay),
        )
        self._record_failure(slot, error, retry_in=delay)

    def _record_failure(self, slot: Slot, error: str, **data: Any) -> None:
        self.stats.of(slot.name).record_failure()
        self.events.emit(EventKind.FAILED, slot.name, error=error, **data)


def _outcome_read(job: asyncio.Future[Any]) -> None:
    if not job.cancelled():
        job.exception()
