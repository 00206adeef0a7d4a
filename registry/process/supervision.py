"""What the manager does about process models: a dead worker, its memory, a leak.

- Each loaded worker is watched (its process sentinel, on the event loop): a worker that
  dies while idle is noticed at once: its model is unloaded, its bytes released, its death
  counted and logged, and the next request loads it again as a normal cold load (a hot
  model loads again at once).
- A worker that dies during a call (or is killed by a timeout) leaves its model `failed`
  with the usual backoff; its bytes are released (the worker is already reaped). Requests
  queued behind it (in its batcher or for its thread) get 503 `model_failed` with the
  backoff as Retry-After instead of reaching the dead worker; a later request reloads it.
- After each request the model's tracked size follows the worker's measured memory (taken
  after that very call). Growth that does not fit evicts idle models; if nothing can make
  room the worker is recycled. A worker grown past its reservation by
  `server.worker_memory_margin` is recycled (unloaded and loaded anew) once no request holds
  it; the event is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from typing import TYPE_CHECKING

from registry.errors import ModelFailed, RegistryError
from registry.events import EventKind, UnloadReason
from registry.memory.devices import CPU
from registry.memory.gpu_charges import follow_gpu
from registry.process.proxy import ProcessModel
from registry.slot import Slot, State
from registry.threads import run_in_thread
from registry.units import format_bytes, format_duration

if TYPE_CHECKING:
    from registry.lifecycle import Lifecycle

log = logging.getLogger("registry")


def watch(life: Lifecycle, slot: Slot, model: ProcessModel) -> None:
    """Notice the end of `model`'s worker as soon as it happens (a loaded model's)."""
    loop = asyncio.get_running_loop()
    fd = model.sentinel()
    if fd is None:  # already reaped
        loop.call_soon(_exited, life, slot, model)
        return

    def readable() -> None:
        loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        _exited(life, slot, model)

    loop.add_reader(fd, readable)


def _exited(life: Lifecycle, slot: Slot, model: ProcessModel) -> None:
    """The worker's process has ended (unloads end theirs too: nothing to do then)."""
    model.exited = True
    if slot.model is model and slot.state is State.LOADED and slot.leases == 0:
        worker_gone(life, slot, model)
    # With requests on it, their calls see the death (WorkerDied: worker_lost), and the
    # last one's release checks again (after_request).


def worker_gone(life: Lifecycle, slot: Slot, model: ProcessModel) -> None:
    """No request holds the model and its worker is gone: unload it (died while idle) or
    fail it (a call saw it die, and its request may not have said so)."""
    if slot.model is not model or slot.state is not State.LOADED:
        return
    if model.lost_in_call:
        how = model.how or "its process ended"
        _fail(life, slot, model, f"model {slot.name!r}: its worker died during a call: {how}")
        return
    _, thread = slot.drop_model()
    life.pool.retire(thread)
    freed = sum(life.budgets.release(slot).values())
    slot.stats.record_worker_death()
    slot.measured(model.reserved or None)  # what a fresh worker held, not what this one grew to
    slot.unloaded()
    reason = UnloadReason.WORKER_DIED
    life.stats.of(slot.name).record_unload(reason, 0.0)
    life.events.emit(EventKind.UNLOADED, slot.name, reason=reason.value, freed_bytes=freed)
    life.notify()
    life.spawn(_log_idle_death(slot.name, model, freed), name=f"reap {slot.name}")
    if slot.spec.hot:  # a hot model is kept loaded: load it again now
        life.start_load(slot)


async def _log_idle_death(name: str, model: ProcessModel, freed: int) -> None:
    how = await run_in_thread(model.reap, name=f"reap-{name}")
    log.error(
        "the worker of %s (pid %s) died while idle: %s; unloaded it and released %s; "
        "the next request loads it again",
        name,
        model.pid,
        how,
        format_bytes(freed),
    )


def worker_lost(life: Lifecycle, slot: Slot, exc: RegistryError) -> None:
    """The worker serving `slot` died or was killed during a call: fail the model, release
    its bytes, and turn away the requests queued behind it."""
    model = slot.model
    if not isinstance(model, ProcessModel) or model.alive or slot.state is not State.LOADED:
        return
    _fail(life, slot, model, exc.message)


def _fail(life: Lifecycle, slot: Slot, model: ProcessModel, message: str) -> None:
    batcher = slot.batcher
    _, thread = slot.drop_model()
    delay = slot.fail(message, life.settings.retry_backoff, None)
    error = functools.partial(_queued_error, slot, model.how or "it died")
    if thread is not None:
        thread.mark_broken(error)  # calls waiting for its thread raise error() instead
    if batcher is not None:
        batcher.fail_queued(error)
    life.pool.retire(thread)
    life.budgets.release(slot)
    slot.stats.record_worker_death()
    slot.retirement.cancel_unload()
    log.error("%s (next load in %s)", message, format_duration(delay))
    life.notify()


def _queued_error(slot: Slot, how: str) -> ModelFailed:
    """What a request queued behind a dead worker gets: 503, retry after the backoff."""
    return ModelFailed(
        slot.name,
        f"its worker process died ({how}) before this request ran; it reloads on a later request",
        retry_after=max(1.0, slot.retry_at - time.monotonic()),
        what="lost its worker",
    )


def after_request(life: Lifecycle, slot: Slot) -> None:
    """Follow the worker's measured memory, making room for its growth; recycle a worker
    that leaks or that no room can be made for. A GPU model's charge there follows what it
    holds there (registry/memory/gpu_charges.py)."""
    follow_gpu(life, slot)
    model = slot.model
    if not isinstance(model, ProcessModel) or slot.state is not State.LOADED:
        return
    if not model.alive:
        if slot.leases == 0:
            worker_gone(life, slot, model)
        return
    size = model.size_bytes
    budget = life.budget
    if size != budget.size_of(slot):
        budget.follow(slot, size)  # the measured truth, even before room is made for it
        if life.budgets.home(slot) in (None, CPU):  # a GPU model's size is its GPU charge
            slot.measured(size)
        life.record_peak()
    # Its growth does not fit: evict idle models; if nothing can make the room, recycle it.
    grown = size > model.reserved and budget.used > budget.limit
    no_room = grown and not life.make_room_for(slot, size)
    limit = model.reserved * (1 + life.settings.worker_memory_margin)
    leaking = model.private_bytes > limit
    if not (leaking or no_room) or slot.leases or slot.retirement.unload_requested:
        return
    slot.stats.record_recycle()
    log.warning(
        "recycling the worker of %s (pid %s): its private memory %s grew past %s; recycle #%d",
        slot.name,
        model.pid,
        format_bytes(model.private_bytes),
        f"its reservation {format_bytes(model.reserved)} by more than worker_memory_margin "
        f"({life.settings.worker_memory_margin:g})"
        if leaking
        else f"what the {format_bytes(budget.limit)} budget can make room for",
        slot.stats.recycles,
    )
    slot.measured(None)  # measure again on the fresh worker
    grew = "its reservation" if leaking else "the room the budget has"
    life.start_unload(
        slot, f"recycled: its worker's memory grew past {grew}", reason=UnloadReason.RECYCLE
    )
    life.spawn(_reload_after(life, slot), name=f"recycle {slot.name}")


async def _reload_after(life: Lifecycle, slot: Slot) -> None:
    task = slot.unload_task
    if task is not None:
        await task
    if slot.state is State.UNLOADED and not slot.retirement.retired and not life.closing:
        life.start_load(slot)
