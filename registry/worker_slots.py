"""What the manager does about process models: a dead worker, its memory, a leak.

- A worker that died (or was killed by a timeout) leaves its model `failed` with the usual
  backoff; its bytes are released (the worker is already reaped); a later request reloads it.
- After each request the model's tracked size follows the worker's measured memory; a
  worker grown past its reservation by `server.worker_memory_margin` is recycled (unloaded
  and loaded anew) once no request holds it; the event is logged and counted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from registry.errors import RegistryError
from registry.events import UnloadReason
from registry.slot import Slot, State
from registry.units import format_bytes, format_duration
from registry.workers import ProcessModel

if TYPE_CHECKING:
    from registry.lifecycle import Lifecycle

log = logging.getLogger("registry")


def worker_lost(life: Lifecycle, slot: Slot, exc: RegistryError) -> None:
    """The worker serving `slot` died or was killed: fail the model, release its bytes."""
    model = slot.model
    if not isinstance(model, ProcessModel) or model.alive or slot.state is not State.LOADED:
        return
    _, thread = slot.drop_model()  # queued requests keep the batcher, fail fast on the worker
    life.pool.retire(thread)
    life.budget.release(slot)
    slot.stats.record_worker_death()
    delay = slot.fail(exc.message, life.settings.retry_backoff, None)
    slot.retirement.cancel_unload()
    log.error("%s (next load in %s)", exc.message, format_duration(delay))
    life.notify()


def after_request(life: Lifecycle, slot: Slot) -> None:
    """Follow the worker's measured memory; recycle a worker that leaks."""
    model = slot.model
    if not isinstance(model, ProcessModel) or slot.state is not State.LOADED:
        return
    size = model.size_bytes
    budget = life.budget
    if size != budget.size_of(slot) and budget.fits(size, replacing=slot):
        budget.reserve(slot, size)
        slot.measured(size)
        life.record_peak()
    limit = model.reserved * (1 + life.settings.worker_memory_margin)
    if model.private_bytes <= limit or slot.leases or slot.retirement.unload_requested:
        return
    slot.stats.record_recycle()
    log.warning(
        "recycling the worker of %s (pid %s): its private memory %s grew past its "
        "reservation %s by more than worker_memory_margin (%g); recycle #%d",
        slot.name,
        model.pid,
        format_bytes(model.private_bytes),
        format_bytes(model.reserved),
        life.settings.worker_memory_margin,
        slot.stats.recycles,
    )
    slot.measured(None)  # measure again on the fresh worker
    life.start_unload(
        slot,
        "recycled: its worker's memory grew past its reservation",
        reason=UnloadReason.RECYCLE,
    )
    life.spawn(_reload_after(life, slot), name=f"recycle {slot.name}")


async def _reload_after(life: Lifecycle, slot: Slot) -> None:
    task = slot.unload_task
    if task is not None:
        await task
    if slot.state is State.UNLOADED and not slot.retirement.retired and not life.closing:
        life.start_load(slot)
