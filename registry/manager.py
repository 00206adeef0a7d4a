"""ModelManager: loads models on demand, leases them to requests, evicts idle ones to fit.

Everything here runs on one event loop; loads, unloads and inference run in threads.
- Single flight: a model has at most one load task, owned by the manager; requests wait for
  it without owning it, so a client that goes away cancels nothing.
- Leases: a request holds its model from before inference until the worker thread is done;
  a leased, loading or pinned model is never evicted.
- Budget: a load reserves its estimated bytes first (evicting idle models, least recently
  used first), then swaps the estimate for the measured size.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from registry.batching import Batcher
from registry.budget import ByteBudget
from registry.config import Config, ModelSpec
from registry.errors import (
    BadInput,
    CapacityExceeded,
    InferenceError,
    LoadPending,
    ModelFailed,
    ModelTooLarge,
    QueueFull,
    ShuttingDown,
    UnknownModel,
    UnsupportedInput,
)
from registry.loaders import LoadContext, Model, load_model
from registry.loaders.torch_setup import configure as configure_torch
from registry.memory import estimate_bytes, measure_bytes, release_memory
from registry.payload import ImageRequest, PredictRequest, decode_image, to_jsonable
from registry.slot import Slot, State
from registry.threads import InferencePool, default_workers, run_in_thread
from registry.units import format_bytes, format_duration

log = logging.getLogger("registry")


class ModelManager:
    """The registry of models and their life cycles (see DESIGN.md)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        settings = config.server
        self._slots: dict[str, Slot] = {
            name: self._new_slot(name, spec) for name, spec in config.models.items()
        }
        self._budget: ByteBudget[Slot] = ByteBudget(settings.memory_budget)
        self._load_limit = asyncio.Semaphore(settings.max_parallel_loads)
        self._pool = InferencePool(settings.inference_workers or default_workers())
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self._closing = False
        self._closed = False
        self._in_flight_at_close = 0
        self.peak_used = 0
        configure_torch(settings.torch_threads)

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Start preloading hot models and the idle-TTL reaper; returns at once."""
        for slot in self._slots.values():
            if slot.spec.hot:
                self._start_load(slot)
        self._spawn(self._reap(), name="reaper")

    async def wait_hot(self) -> None:
        """Wait until every hot model has finished its first load attempt."""
        tasks = [s.load_task for s in self._slots.values() if s.spec.hot and s.load_task]
        if tasks:
            await asyncio.wait(tasks)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready once every hot model has loaded; the detail lists what is pending or failed."""
        pending = [
            s.name
            for s in self._slots.values()
            if s.spec.hot and not s.hot_ready and s.state is not State.FAILED
        ]
        failed = {
            s.name: s.error
            for s in self._slots.values()
            if s.spec.hot and not s.hot_ready and s.state is State.FAILED
        }
        ready = not pending and not failed and not self._closing
        status = "shutting down" if self._closing else ("ready" if ready else "starting")
        return ready, {"status": status, "pending": pending, "failed": failed}

    async def shutdown(self, drain_timeout: float | None = None) -> dict[str, Any]:
        """Stop admitting, drain leases (bounded), unload everything, give memory back."""
        if self._closed:
            return {}
        self.begin_shutdown()
        self._notify()
        started = time.monotonic()
        timeout = self.config.server.drain_timeout if drain_timeout is None else drain_timeout
        deadline = started + timeout
        # The server may have drained connections since the signal: count from then.
        in_flight = max(self._in_flight_at_close, sum(s.leases for s in self._all_slots()))
        while any(s.leases for s in self._all_slots()) and time.monotonic() < deadline:
            await self._wait_changed(deadline - time.monotonic())
        abandoned = sum(s.leases for s in self._all_slots())
        for task in list(self._tasks):
            if task.get_name() == "reaper":
                task.cancel()
        loads = [s.load_task for s in self._all_slots() if s.load_task is not None]
        if loads:
            await asyncio.wait(loads, timeout=max(0.0, deadline - time.monotonic()))
            for task in loads:
                task.cancel()
            await asyncio.gather(*loads, return_exceptions=True)
        unloaded = 0
        freed = 0
        for slot in self._all_slots():
            if slot.batcher is not None:
                slot.batcher.cancel()
            if slot.state is State.LOADED:
                freed += self._budget.size_of(slot)
                unloaded += 1
                self._start_unload(slot, "shutdown", quiet=True)
        unloads = [s.unload_task for s in self._all_slots() if s.unload_task is not None]
        if unloads:
            await asyncio.gather(*unloads, return_exceptions=True)
        self._pool.shutdown()
        release_memory()
        self._closed = True
        seconds = time.monotonic() - started
        report = {
            "drained": in_flight - abandoned,
            "abandoned": abandoned,
            "unloaded": unloaded,
            "freed_bytes": freed,
            "seconds": seconds,
        }
        log.info(
            "shutdown complete: drained %d in-flight request(s)%s, unloaded %d model(s) (%s) in %s",
            in_flight - abandoned,
            f", abandoned {abandoned} after the {timeout:g}s drain timeout" if abandoned else "",
            unloaded,
            format_bytes(freed),
            format_duration(seconds),
        )
        return report

    # ------------------------------------------------------------------ requests

    @property
    def closing(self) -> bool:
        """True once shutdown has begun."""
        return self._closing

    def begin_shutdown(self) -> None:
        """Refuse new requests from now on (called from a signal handler)."""
        if not self._closing:
            self._closing = True
            self._in_flight_at_close = sum(s.leases for s in self._slots.values())

    def names(self) -> list[str]:
        """The names in the registry."""
        return sorted(self._slots)

    def spec(self, name: str) -> ModelSpec:
        """The entry of `name`, or UnknownModel."""
        return self._lookup(name).spec

    def describe(self, name: str) -> dict[str, Any]:
        """The public view of one model."""
        return self._lookup(name).info()

    def snapshot(self) -> dict[str, Any]:
        """The public view of the whole registry."""
        return {
            "budget_bytes": self._budget.limit,
            "used_bytes": self._budget.used,
            "peak_used_bytes": self.peak_used,
            "models": [self._slots[name].info() for name in sorted(self._slots)],
        }

    async def predict(self, name: str, request: PredictRequest) -> Any:
        """Run one request on model `name`, loading it first if needed."""
        if self._closing:
            raise ShuttingDown()
        slot = self._lookup(name)
        inputs = await self._prepare(slot, request)
        slot = await self._acquire(slot)
        started = time.monotonic()
        try:
            future = self._infer(slot, inputs, request.parameters)
        except BaseException:
            self._release(slot)
            raise
        future.add_done_callback(lambda _: self._release(slot))
        try:
            outputs = await asyncio.shield(future)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise BadInput(f"model {slot.name!r} rejected the input: {exc}") from exc
        except (BadInput, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("inference failed on %s", slot.name)
            raise InferenceError(
                f"model {slot.name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        elapsed = time.monotonic() - started
        previous = slot.infer_seconds
        slot.infer_seconds = elapsed if previous is None else 0.8 * previous + 0.2 * elapsed
        return outputs if request.is_batch else outputs[0]

    async def _prepare(self, slot: Slot, request: PredictRequest) -> list[Any]:
        kind = slot.spec.input_kind
        what = slot.spec.task or "custom loader"
        if isinstance(request, ImageRequest):
            if kind != "image":
                raise UnsupportedInput(
                    f"model {slot.name!r} ({what}) takes "
                    + ("text" if kind == "text" else "JSON")
                    + ': POST application/json {"inputs": ...}, not a file upload'
                )
            return [await self._pool.submit(decode_image, request.data)]
        if kind == "image":
            raise UnsupportedInput(
                f"model {slot.name!r} ({what}) takes an image: POST multipart/form-data "
                "with the image file in field 'file'"
            )
        items = request.inputs if isinstance(request.inputs, list) else [request.inputs]
        if not items:
            raise BadInput("'inputs' is an empty list; send at least one input")
        limit = self.config.server.max_inputs
        if len(items) > limit:
            raise BadInput(f"'inputs' has {len(items)} items; at most {limit} per request")
        if kind == "text" and not all(isinstance(item, str) for item in items):
            raise BadInput(
                f'model {slot.name!r} ({what}) takes text: "inputs" must be a string '
                "or a list of strings"
            )
        return list(items)

    def _infer(
        self, slot: Slot, inputs: list[Any], parameters: Mapping[str, Any]
    ) -> asyncio.Future[list[Any]]:
        if slot.batcher is not None:
            return slot.batcher.submit(inputs, parameters)
        assert slot.model is not None
        return self._pool.submit(_predict, slot.model, inputs, dict(parameters))

    async def _acquire(self, slot: Slot) -> Slot:
        """Wait until the model is loaded and take a lease on it."""
        deadline = time.monotonic() + self.config.server.request_timeout
        queued: Slot | None = None
        try:
            while True:
                if self._closing:
                    raise ShuttingDown()
                while slot.retired:
                    if slot.replacement is None:
                        raise UnknownModel(slot.name, self._slots, removed=True)
                    slot = slot.replacement
                if slot.state is State.LOADED:
                    slot.leases += 1
                    slot.touch()
                    self._budget.touch(slot)
                    return slot
                if queued is not slot:
                    self._check_queue(slot)
                    if queued is not None:
                        queued.waiting -= 1
                    slot.waiting += 1
                    queued = slot
                now = time.monotonic()
                if slot.state is State.FAILED and now < slot.retry_at:
                    raise ModelFailed(slot.name, slot.error or "", retry_after=slot.retry_at - now)
                if slot.state in (State.UNLOADED, State.FAILED):
                    self._start_load(slot)
                remaining = deadline - now
                if remaining <= 0:
                    raise LoadPending(
                        f"model {slot.name!r} is still {slot.state.value} after "
                        f"{self.config.server.request_timeout:g}s",
                        retry_after=self._eta(slot),
                    )
                task = slot.load_task
                if task is None:
                    await self._wait_changed(remaining)
                    continue
                done, _ = await asyncio.wait({task}, timeout=remaining)
                if task in done and not task.cancelled():
                    outcome = task.result()
                    if isinstance(outcome, CapacityExceeded):
                        raise CapacityExceeded(  # a fresh error per waiter
                            outcome.name,
                            outcome.size,
                            outcome.used,
                            outcome.budget,
                            retry_after=outcome.retry_after,
                        )
        finally:
            if queued is not None:
                queued.waiting -= 1

    def _check_queue(self, slot: Slot) -> None:
        limit = slot.spec.max_queue or self.config.server.max_queue
        if slot.waiting + slot.leases < limit:
            return
        loading = slot.state is not State.LOADED
        what = "loading" if loading else "busy"
        raise QueueFull(
            f"model {slot.name!r} is {what}: {slot.waiting + slot.leases} requests already "
            f"wait for it (max_queue {limit})",
            retry_after=self._eta(slot) if loading else self._busy_eta(slot),
            loading=loading,
        )

    def _eta(self, slot: Slot) -> float:
        """Seconds until the model is probably loaded (its last load time, else a guess)."""
        if slot.load_seconds is not None:
            return math.ceil(slot.load_seconds + 0.5)
        size = slot.estimate or 0
        return math.ceil(2 + size / 200e6)  # first load: imports, then ~200 MB/s

    def _busy_eta(self, slot: Slot) -> float:
        per_call = slot.infer_seconds or 0.05
        return math.ceil(per_call * (slot.waiting + slot.leases) / self._pool.workers + 0.5)

    def _release(self, slot: Slot) -> None:
        slot.leases -= 1
        slot.served += 1
        slot.touch()
        self._budget.touch(slot)
        if slot.retired and slot.leases == 0 and slot.state is State.LOADED:
            self._start_unload(slot, "removed from models.yaml")
        self._notify()

    # -------------------------------------------------------------------- loading

    def _start_load(self, slot: Slot) -> None:
        if slot.load_task is not None or self._closing or slot.retired:
            return
        slot.state = State.LOADING
        slot.error = None
        slot.load_task = self._spawn(self._load(slot), name=f"load {slot.name}")

    async def _load(self, slot: Slot) -> BaseException | None:
        """Load one model; never raises (but for cancellation): the outcome is returned."""
        settings = self.config.server
        timeout = slot.spec.load_timeout or settings.load_timeout
        try:
            async with self._load_limit:
                estimate = await run_in_thread(
                    functools.partial(estimate_bytes, slot.spec, slot.source), name="estimate"
                )
                slot.estimate = estimate
                need = estimate or 0
                if need > self._budget.limit:
                    raise ModelTooLarge(slot.name, need, self._budget.limit)
                await self._reserve(slot, need)
                started = time.monotonic()
                try:
                    model, measured = await asyncio.wait_for(
                        run_in_thread(
                            functools.partial(self._load_blocking, slot),
                            name=f"load-{slot.name}",
                            on_orphan=_dispose_loaded,
                        ),
                        timeout,
                    )
                except BaseException:
                    self._budget.release(slot)
                    raise
                seconds = time.monotonic() - started
                await self._settle_size(slot, model, measured if measured is not None else need)
            self._loaded(slot, model, seconds)
            return None
        except CapacityExceeded as exc:
            slot.state = State.UNLOADED
            slot.error = exc.message
            log.warning("cannot load %s: %s", slot.name, exc.message)
            return exc
        except asyncio.CancelledError:
            slot.state = State.UNLOADED
            raise
        except Exception as exc:
            self._failed(slot, exc, timeout)
            return exc
        finally:
            slot.load_task = None
            self._notify()

    def _load_blocking(self, slot: Slot) -> tuple[Model, int | None]:
        ctx = LoadContext(slot.name, slot.spec, slot.source, self.config.base_dir)
        model = load_model(ctx)
        return model, measure_bytes(model)

    async def _settle_size(self, slot: Slot, model: Model, measured: int) -> None:
        """Replace the estimate with the measured size, making room if it grew."""
        try:
            if measured > self._budget.limit:
                raise ModelTooLarge(slot.name, measured, self._budget.limit, measured=True)
            await self._reserve(slot, measured, replacing=True)
        except BaseException:
            self._budget.release(slot)
            await run_in_thread(functools.partial(_dispose_loaded, (model, None)), name="dispose")
            raise
        slot.size_bytes = measured

    def _loaded(self, slot: Slot, model: Model, seconds: float) -> None:
        slot.model = model
        slot.state = State.LOADED
        slot.load_count += 1
        slot.failures = 0
        slot.error = None
        slot.load_seconds = seconds
        slot.touch()
        self._budget.touch(slot)
        if slot.spec.hot:
            slot.hot_ready = True
        batch = slot.spec.batch
        if batch is not None:
            slot.batcher = Batcher(
                functools.partial(self._run_batch, model),
                max_size=batch.max_size,
                max_wait=batch.max_wait_ms / 1000,
                alone=lambda: slot.leases <= 1,
            )
        log.info(
            "loaded %s (%s) in %s",
            slot.name,
            format_bytes(slot.size_bytes or 0),
            format_duration(seconds),
        )
        if slot.retired and slot.waiting == 0:
            self._start_unload(slot, "removed from models.yaml")

    async def _run_batch(
        self, model: Model, inputs: list[Any], parameters: Mapping[str, Any]
    ) -> list[Any]:
        return await self._pool.submit(_predict, model, inputs, dict(parameters))

    def _failed(self, slot: Slot, exc: BaseException, timeout: float) -> None:
        backoff = self.config.server.retry_backoff
        slot.failures += 1
        delay = min(backoff.max, backoff.initial * 2 ** (slot.failures - 1))
        slot.retry_at = time.monotonic() + delay
        slot.state = State.FAILED
        if isinstance(exc, TimeoutError):
            slot.error = f"load timed out after {timeout:g}s (load_timeout)"
        elif isinstance(exc, ModelTooLarge):
            slot.error = exc.message
        else:
            slot.error = f"{type(exc).__name__}: {exc}"
        log.error(
            "failed to load %s: %s (attempt %d, next try in %s)",
            slot.name,
            slot.error,
            slot.failures,
            format_duration(delay),
        )

    async def _reserve(self, slot: Slot, nbytes: int, *, replacing: bool = False) -> None:
        """Reserve bytes for `slot`, evicting idle models; wait at most capacity_wait."""
        deadline = time.monotonic() + self.config.server.capacity_wait
        budget = self._budget
        while True:
            if budget.fits(nbytes, replacing=slot if replacing else None):
                budget.reserve(slot, nbytes)
                self.peak_used = max(self.peak_used, budget.used)
                return
            freeing = [s for s in budget.keys_lru_first() if s.state is State.UNLOADING]
            victims = budget.victims(
                nbytes,
                evictable=lambda s: s.evictable,
                freeing=freeing,
                replacing=slot if replacing else None,
            )
            for victim in victims or ():
                self._start_unload(victim, f"LRU, to fit {slot.name}")
            remaining = deadline - time.monotonic()
            if victims is None and remaining <= 0:
                raise CapacityExceeded(
                    slot.name,
                    nbytes,
                    budget.used - (budget.size_of(slot) if replacing else 0),
                    budget.limit,
                    retry_after=self._busy_eta(slot),
                )
            await self._wait_changed(remaining if victims is None else 1.0)

    # ------------------------------------------------------------------ unloading

    def _start_unload(self, slot: Slot, why: str, *, quiet: bool = False) -> None:
        if slot.state is not State.LOADED:
            return
        slot.state = State.UNLOADING
        slot.unload_task = self._spawn(self._unload(slot, why, quiet), name=f"unload {slot.name}")

    async def _unload(self, slot: Slot, why: str, quiet: bool) -> None:
        model, slot.model = slot.model, None
        slot.batcher = None
        size = self._budget.size_of(slot)
        idle = time.monotonic() - slot.last_used_mono
        try:
            await run_in_thread(
                functools.partial(_dispose_loaded, (model, None)), name=f"unload-{slot.name}"
            )
        except Exception:
            log.exception("error while unloading %s (memory is released anyway)", slot.name)
        finally:
            self._budget.release(slot)
            slot.state = State.UNLOADED
            slot.unload_task = None
            self._notify()
        verb = "evicted" if why.startswith("LRU") else "unloaded"
        message = f"{verb} %s (%s, idle %s, %s)"
        (log.debug if quiet else log.info)(
            message, slot.name, format_bytes(size), format_duration(idle), why
        )

    async def _reap(self) -> None:
        """Unload models idle past their TTL; retry failed hot models after their backoff."""
        default_ttl = self.config.server.idle_ttl
        while not self._closing:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for slot in list(self._slots.values()):
                ttl = slot.spec.idle_ttl if slot.spec.idle_ttl is not None else default_ttl
                if ttl > 0 and slot.evictable and now - slot.last_used_mono > ttl:
                    self._start_unload(slot, f"past its idle_ttl of {format_duration(ttl)}")
                if slot.spec.hot and slot.state is State.FAILED and now >= slot.retry_at:
                    self._start_load(slot)

    # -------------------------------------------------------------------- helpers

    def _new_slot(self, name: str, spec: ModelSpec) -> Slot:
        try:
            source = self.config.source_of(name)
        except ValueError:
            source = None  # reported when it loads
        return Slot(name=name, spec=spec, source=source)

    def _lookup(self, name: str) -> Slot:
        slot = self._slots.get(name)
        if slot is None:
            raise UnknownModel(name, self._slots)
        return slot

    def _all_slots(self) -> list[Slot]:
        slots = {id(s): s for s in self._slots.values()}
        for slot in self._budget.keys_lru_first():
            slots.setdefault(id(slot), slot)
        return list(slots.values())

    def _spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_changed(self, seconds: float | None) -> None:
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)


def _predict(model: Model, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
    """Run in a worker thread: predict, then make the outputs JSON-safe there too."""
    return [to_jsonable(out) for out in model.predict(inputs, parameters)]


def _dispose_loaded(result: tuple[Model | None, Any]) -> None:
    """Close a model and give its memory back (in a worker thread)."""
    model = result[0]
    if model is not None:
        model.close()
    del model, result
    release_memory()
