"""ModelManager: the registry's public face: requests, admin actions, reloads, shutdown.

Everything runs on one event loop; loads, unloads and inference run in threads.
admission.py takes requests in, lifecycle.py loads and unloads under the budget; this
module starts and stops them, answers the views, and applies edits of models.yaml
(only what changed; an invalid file changes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

from registry import views
from registry.admission import Admission
from registry.config.devices import config_devices
from registry.config.file import load_config
from registry.config.schema import GENERATION_TASK, Config, ModelSpec
from registry.errors import (
    CapacityExceeded,
    ConfigError,
    ModelFailed,
    ShuttingDown,
)
from registry.events import EventBus, EventKind, UnloadReason
from registry.generation import Chunk, GenerateRequest
from registry.lifecycle import Lifecycle
from registry.loaders.torch_setup import configure as configure_torch
from registry.memory.sizes import release_memory
from registry.payload import PredictRequest
from registry.process import proxy as workers
from registry.reaper import reap
from registry.reload import Changes, plan
from registry.roster import Roster
from registry.slot import Slot, State
from registry.stats import Stats
from registry.streaming import Streams
from registry.threads import InferencePool, default_workers, run_in_thread
from registry.units import format_bytes, format_duration
from registry.watcher import stamp, watch

log = logging.getLogger("registry")
UNLOAD_GRACE = 2.0  # seconds unloads may take after the drain (a small, fixed bound)


class ModelManager:
    """The registry of models and their life cycles (docs/architecture.md)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.config_error: views.ConfigRefusal | None = None
        self.config_loaded_at = _now()
        settings = config.server
        self._pool = InferencePool(settings.inference_workers or default_workers())
        self._life = Lifecycle(settings, config.base_dir, self._pool, config_devices(config))
        self._roster = Roster(
            self._new_slot(config, name, spec) for name, spec in config.models.items()
        )
        self._admission = Admission(self._roster, self._life, self._pool)
        self._streams = Streams(self._admission, self._life)
        self._closed = False
        self._in_flight_at_close = 0
        self.report: dict[str, Any] = {}  # the shutdown's summary, once it is done
        self._reloading = asyncio.Lock()
        # The background tasks this object starts (kept referenced by the lifecycle too).
        self._reaper: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[Any] | None = None
        self._preloaded = False
        configure_torch(settings.torch_threads)

    # ----------------------------------------------------------------- life cycle

    async def start(self, *, preload: bool = True) -> None:
        """Start the idle-TTL reaper and the file watcher, and preload unless told not to.

        `preload=False`: the caller calls `preload()` later (the HTTP server does once it
        listens, so that the imports of the loads do not delay its first answer).
        """
        if preload:
            self.preload()
        reaper = reap(self._life, self._roster, lambda: self.config.server)
        self._reaper = self._life.spawn(reaper, name="reaper")
        if self.config.server.watch:
            path, interval = self.config.path, self.config.server.watch_interval
            since = stamp(path)  # now, not when the task first runs
            self._watcher = self._life.spawn(
                watch(path, interval, self._reload_quietly, since), name="watch"
            )

    def preload(self) -> None:
        """Start loading the hot models, and the forkserver's imports if a model needs it."""
        if self._preloaded or self._life.closing:
            return
        self._preloaded = True
        for slot in self._roster:
            if slot.spec.hot:
                self._life.start_load(slot)
        config = self.config  # process models: start the forkserver's imports now, aside
        run_in_thread(
            functools.partial(workers.warm_for, config.models, config.server, config.base_dir),
            name="forkserver",
        )

    async def wait_hot(self) -> None:
        """Wait until every hot model has finished its first load attempt."""
        tasks = [s.load_task for s in self._roster if s.spec.hot and s.load_task]
        if tasks:
            await asyncio.wait(tasks)

    def readiness(self) -> views.Readiness:
        """Ready once every hot model has loaded; lists what is pending or failed."""
        hot = [s for s in self._roster if s.spec.hot and not s.hot_ready]
        return views.Readiness(
            closing=self._life.closing,
            pending=tuple(s.name for s in hot if s.state is not State.FAILED),
            failed={s.name: s.error for s in hot if s.state is State.FAILED},
        )

    @property
    def closing(self) -> bool:
        """True once shutdown has begun."""
        return self._life.closing

    def begin_shutdown(self, drain_timeout: float | None = None) -> None:
        """Refuse new requests from now on (the server calls it when a signal arrives).

        Requests admitted before now are served while the drain lasts: `drain_timeout`
        (server.drain_timeout) from now. Then those still waiting get 503 shutting_down.
        """
        life = self._life
        if life.closing:
            return
        timeout = self.config.server.drain_timeout if drain_timeout is None else drain_timeout
        life.begin_closing(timeout)
        self.events.close()  # open /events streams end, so they do not hold up the drain
        self._in_flight_at_close = sum(s.leases + s.waiting for s in self._all_slots())

    async def shutdown(self, drain_timeout: float | None = None) -> dict[str, Any]:
        """Stop admitting, drain requests (bounded), unload everything, give memory back.

        The drain counts from begin_shutdown() (the signal), so the HTTP server's own wait
        and this one do not add up. A passed `drain_timeout` overrides the configured one.
        """
        if self._closed:
            return {}
        life = self._life
        started = time.monotonic()
        self.begin_shutdown(drain_timeout)
        timeout = self.config.server.drain_timeout if drain_timeout is None else drain_timeout
        if drain_timeout is not None:
            life.shorten_drain(timeout)
        # The HTTP server may have drained its connections since the signal: count from then.
        in_flight = max(self._in_flight_at_close, self._pending())
        await life.drain_requests(self._pending)  # whatever still waits is answered 503 then
        for task in (self._reaper, self._watcher):
            if task is not None:
                task.cancel()
        grace = life.drain_left() + UNLOAD_GRACE
        unloaded, freed = await life.unload_all(self._all_slots(), grace)
        self._pool.shutdown()
        await run_in_thread(workers.stop_all, name="stop-workers")  # any left by a hung call
        gc.unfreeze()
        release_memory(full=True)
        self._closed = True
        seconds = time.monotonic() - started
        abandoned = life.drain.cut_off  # admitted, then answered 503 when the drain ended
        threads = len(life.abandoned)
        log.info(
            "shutdown complete: drained %d in-flight request(s)%s, unloaded %d model(s) (%s) "
            "in %s%s",
            max(0, in_flight - abandoned),
            f", abandoned {abandoned} after the {timeout:g}s drain timeout" if abandoned else "",
            unloaded,
            format_bytes(freed),
            format_duration(seconds),
            f"; {threads} model thread(s) still running" if threads else "",
        )
        self.report = {
            "drained": max(0, in_flight - abandoned),
            "abandoned": abandoned,
            "abandoned_threads": threads,
            "unloaded": unloaded,
            "freed_bytes": freed,
            "seconds": seconds,
        }
        return self.report

    def _pending(self) -> int:
        """Admitted requests not answered yet: in a model's thread, or waiting for one."""
        return sum(s.leases + s.waiting for s in self._all_slots())

    # ---------------------------------------------------------------------- views

    def names(self) -> list[str]:
        """The names in the registry."""
        return self._roster.names()

    def spec(self, name: str) -> ModelSpec:
        """The entry of `name`, or UnknownModel."""
        return self._lookup(name).spec

    def describe(self, name: str) -> views.ModelView:
        """The view of one model."""
        return self._entry(self._lookup(name))

    @property
    def events(self) -> EventBus:
        """The stream of model events (GET /events, the dashboard, the metrics)."""
        return self._life.events

    @property
    def stats(self) -> Stats:
        """Per-model request, load and unload figures (GET /metrics)."""
        return self._life.stats

    @property
    def pool(self) -> InferencePool:
        """The inference pool (its busy count is a metric)."""
        return self._pool

    def snapshot(self) -> views.RegistryView:
        """The view of the whole registry."""
        life = self._life
        budget = life.budget
        loading = [s for s in self._all_slots() if s.state is State.LOADING]
        return views.RegistryView(
            budget_bytes=budget.limit,
            used_bytes=budget.used,
            reserved_bytes=sum(budget.size_of(s) for s in loading),
            peak_used_bytes=life.peak_used,
            abandoned=tuple(views.abandoned_view(record) for record in life.abandoned),
            unused_loads=life.unused_loads,
            config_path=self.config.path,
            config_loaded_at=self.config_loaded_at,
            config_error=self.config_error,
            eviction=budget.policy,
            models=tuple(self._entry(self._roster.lookup(name)) for name in self._roster.names()),
            last_event_id=self.events.last_id,
            spare_worker=workers.spares.state(),
            devices=views.device_views(life.budgets, life.devices, loading),
        )

    def _entry(self, slot: Slot) -> views.ModelView:
        """A model's view with the manager's part: its eviction priority, what the budget
        holds for it (loaded, or reserved for a load) and the time its idle TTL leaves it."""
        budgets = self._life.budgets
        home = budgets.home(slot)
        budget = budgets.budget(home or "cpu")
        holding = views.Holding(
            eviction=budget.policy,
            eviction_priority=budget.priority(slot),
            held_bytes=budget.size_of(slot),
            home=home,
            device_bytes=budgets.holdings(slot),
            ttl_left_seconds=self._ttl_left(slot, time.monotonic()),
        )
        return views.model_view(slot, holding)

    async def count_tokens(self, name: str, texts: list[str]) -> list[int] | None:
        """Token counts by the loaded model's tokenizer; None without one (or if not loaded)."""
        count = getattr(self._lookup(name).model, "count_tokens", None)
        if count is None:
            return None
        try:
            return list(await asyncio.to_thread(count, texts))
        except RuntimeError:  # unloaded meanwhile
            return None

    # ------------------------------------------------------------------- requests

    async def predict(self, name: str, request: PredictRequest) -> Any:
        """Run one request on model `name`, loading it first if needed."""
        spec = self._lookup(name).spec
        if spec.task == GENERATION_TASK:  # generated as streams are (registry/streaming.py)
            return await self._streams.predict(name, spec, request)
        return await self._admission.predict(name, request)

    def stream(self, name: str, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        """Generate on model `name`, chunk by chunk, under a lease (registry/streaming.py)."""
        return self._streams.stream(name, request)

    # ---------------------------------------------------------------------- admin

    async def load(self, name: str) -> views.ModelView:
        """Load a model now (a failed one is retried at once); returns its entry."""
        slot = self._lookup(name)
        if self._life.closing:
            raise ShuttingDown()
        if slot.retirement.cancel_unload():
            self._life.notify()  # requests parked behind the pending unload may go
        if slot.state is State.UNLOADING and slot.unload_task is not None:
            await asyncio.wait({slot.unload_task})
        if slot.state is State.OFFLOADING and slot.unload_task is not None:
            await asyncio.wait({slot.unload_task})  # a copy to host memory ends first
        if slot.needs_load:
            self._life.start_load(slot)
        task = slot.load_task
        outcome = None
        if task is not None:
            await asyncio.wait({task})  # not cancelled with the caller; may be (model replaced)
            outcome = None if task.cancelled() else task.result()
        if isinstance(outcome, CapacityExceeded):
            raise outcome
        if slot.state is State.FAILED:
            raise ModelFailed(
                slot.name, slot.error or "", retry_after=slot.retry_at - time.monotonic()
            )
        return self._entry(slot)

    async def unload(self, name: str) -> views.ModelView:
        """Unload a model once its in-flight requests finish (up to drain_timeout)."""
        slot = self._lookup(name)
        life = self._life
        held = (State.LOADING, State.LOADED, State.UNLOADING, State.OFFLOADING, State.OFFLOADED)
        if slot.state in held:
            life.request_unload(slot, UnloadReason.ADMIN)
            deadline = time.monotonic() + self.config.server.drain_timeout
            # for the load, for the leases to end, or for a copy to host memory to end
            waiting = (State.LOADING, State.LOADED, State.OFFLOADING)
            while slot.state in waiting and time.monotonic() < deadline:
                await life.wait_changed(deadline - time.monotonic())
                life.request_unload(slot, UnloadReason.ADMIN)  # stands even if a load withdrew it
            if slot.unload_task is not None:
                await asyncio.shield(slot.unload_task)
            if self._unloaded(slot):
                slot.retirement.cancel_unload()  # else the last lease unloads it
        return self._entry(slot)

    def _ttl_left(self, slot: Slot, now: float) -> float | None:
        """Seconds until an idle model's TTL unloads it (None: no TTL, pinned or in use)."""
        ttl = slot.idle_ttl(self.config.server.idle_ttl)
        if ttl <= 0 or slot.spec.pinned or slot.state is not State.LOADED or slot.leases:
            return None
        return max(0.0, ttl - (now - slot.stats.last_used_mono))

    @staticmethod
    def _unloaded(slot: Slot) -> bool:
        return slot.state in (State.UNLOADED, State.FAILED)

    async def reload(self) -> Changes:
        """Re-read models.yaml and apply the difference; on an invalid file change nothing."""
        async with self._reloading:  # one at a time, so the last read is the one applied
            try:
                config = await run_in_thread(
                    functools.partial(load_config, self.config.path), name="reload"
                )
            except ConfigError as exc:
                self.config_error = views.ConfigRefusal(exc.message, tuple(exc.problems), _now())
                log.error("kept the running registry: %s", exc.message)
                self.events.emit(EventKind.CONFIG_REFUSED, problems=exc.problems)
                raise
            self.config_error = None
            if config.digest == self.config.digest:
                return Changes(unchanged=self._roster.names())
            return self.apply(config)

    def reload_soon(self) -> None:
        """Reload in the background (SIGHUP)."""
        if not self._life.closing:
            self._life.spawn(self._reload_quietly(), name="reload")

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(ConfigError):  # logged, shown in GET /models; edits retry
            await self.reload()

    def apply(self, config: Config) -> Changes:
        """Switch to `config`, touching only the models whose entries changed."""
        changes = plan(self.config, config)
        life = self._life
        self.config = config
        self.config_loaded_at = _now()
        life.use_settings(config.server, config.base_dir)
        roster = self._roster
        for name in changes.removed:
            life.retire(roster.remove(name))
        for name in changes.replaced:
            life.retire(roster.replace(self._new_slot(config, name, config.models[name])))
        for name in changes.added:
            roster.add(self._new_slot(config, name, config.models[name]))
        for name in changes.updated:
            slot = roster.lookup(name)
            slot.update(config.models[name])
            life.refresh_batcher(slot)
        for name in changes.added + changes.replaced + changes.updated:
            slot = roster.lookup(name)
            if slot.spec.hot and not slot.hot_ready and slot.state is State.UNLOADED:
                life.start_load(slot)
            elif slot.spec.hot and slot.state is State.LOADED:
                slot.mark_hot_ready()
        life.apply_limits(set(changes.server_changed))
        if changes.restart_needed:
            log.warning("restart to apply server.%s", ", server.".join(changes.restart_needed))
        log.info("applied %s: %s", config.path.name, changes.summary())
        self.events.emit(EventKind.CONFIG_APPLIED, **changes.as_dict())
        life.notify()
        return changes

    # -------------------------------------------------------------------- helpers

    def _new_slot(self, config: Config, name: str, spec: ModelSpec) -> Slot:
        try:
            source = config.source_of(name)
        except ValueError:
            source = None  # reported when it loads
        return Slot(name=name, spec=spec, source=source)

    def _lookup(self, name: str) -> Slot:
        return self._roster.lookup(name)

    def _all_slots(self) -> list[Slot]:
        """Current slots and retired ones that still hold memory."""
        slots = {id(s): s for s in self._roster}
        for slot in self._life.retired_slots():
            slots.setdefault(id(slot), slot)
        return list(slots.values())


def _now() -> datetime:
    return datetime.now(UTC)
