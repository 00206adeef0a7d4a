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

`Supervision` is owned by the lifecycle (registry/lifecycle.py), which calls its
`watch`, `worker_lost` and `follow_worker_memory`; it knows a process model by its
`worker` (registry/loaders/interface.WorkerHandle) and writes the memory state only
through the room's `Holdings` (registry/memory/holdings.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable

from registry.errors import ModelFailed, RegistryError
from registry.events import EventKind, UnloadReason
from registry.loaders.interface import WorkerHandle, worker_of
from registry.memory.devices import CPU
from registry.memory.making_room import Room
from registry.slot import Slot, State
from registry.threads import run_in_thread
from registry.units import format_bytes, format_duration

log = logging.getLogger("registry")


class Supervision:
    """Watches the workers of loaded process models (see the module docstring)."""

    def __init__(self, room: Room, start_load: Callable[[Slot], None]) -> None:
        self._room = room
        self._start_load = start_load

    def watch(self, slot: Slot) -> None:
        """Notice the end of the loaded model's worker as soon as it happens (a process
        model's; nothing for a model in the server's process)."""
        worker = worker_of(slot.model)
        if worker is None:
            return
        loop = asyncio.get_running_loop()
        fd = worker.sentinel()
        if fd is None:  # already reaped
            loop.call_soon(self._exited, slot, worker)
            return

        def readable() -> None:
            loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
            self._exited(slot, worker)

        loop.add_reader(fd, readable)

    def _exited(self, slot: Slot, worker: WorkerHandle) -> None:
        """The worker's process has ended (unloads end theirs too: nothing to do then)."""
        worker.saw_exit()
        if worker_of(slot.model) is worker and slot.state is State.LOADED and slot.leases == 0:
            self._worker_gone(slot, worker)
        # With requests on it, their calls see the death (WorkerDied: worker_lost), and the
        # last one's release checks again (follow_worker_memory).

    def _worker_gone(self, slot: Slot, worker: WorkerHandle) -> None:
        """No request holds the model and its worker is gone: unload it (died while idle) or
        fail it (a call saw it die, and its request may not have said so)."""
        if worker_of(slot.model) is not worker or slot.state is not State.LOADED:
            return
        room = self._room
        if worker.lost_in_call:
            how = worker.how or "its process ended"
            self._fail(slot, worker, f"model {slot.name!r}: its worker died during a call: {how}")
            return
        freed = room.holdings.forget(slot)
        slot.stats.record_worker_death()
        slot.measured(worker.reserved or None)  # what a fresh worker held, not what it grew to
        slot.unloaded()
        reason = UnloadReason.WORKER_DIED
        room.stats.of(slot.name).record_unload(reason, 0.0)
        room.events.emit(EventKind.UNLOADED, slot.name, reason=reason.value, freed_bytes=freed)
        room.notify()
        room.spawn(_log_idle_death(slot.name, worker, freed), name=f"reap {slot.name}")
        if slot.spec.hot:  # a hot model is kept loaded: load it again now
            self._start_load(slot)

    def worker_lost(self, slot: Slot, exc: RegistryError) -> None:
        """The worker serving `slot` died or was killed during a call: fail the model,
        release its bytes, and turn away the requests queued behind it."""
        worker = worker_of(slot.model)
        if worker is None or worker.alive or slot.state is not State.LOADED:
            return
        self._fail(slot, worker, exc.message)

    def _fail(self, slot: Slot, worker: WorkerHandle, message: str) -> None:
        holdings = self._room.holdings
        batcher = slot.batcher
        _, thread = slot.drop_model()
        delay = slot.fail(message, self._room.settings.retry_backoff, None)
        error = functools.partial(_queued_error, slot, worker.how or "it died")
        if thread is not None:
            thread.mark_broken(error)  # calls waiting for its thread raise error() instead
        if batcher is not None:
            batcher.fail_queued(error)
        holdings.retire_thread(thread)
        holdings.release(slot)
        slot.stats.record_worker_death()
        slot.retirement.cancel_unload()
        log.error("%s (next load in %s)", message, format_duration(delay))
        self._room.notify()

    def follow_worker_memory(self, slot: Slot) -> None:
        """After a request: the model's tracked size follows its worker's measured memory,
        making room for its growth; a worker that leaks, or that no room can be made for,
        is recycled. A GPU model's charge there follows what it holds there
        (Room.follow_gpu)."""
        room = self._room
        room.follow_gpu(slot)
        worker = worker_of(slot.model)
        if worker is None or slot.state is not State.LOADED:
            return
        if not worker.alive:
            if slot.leases == 0:
                self._worker_gone(slot, worker)
            return
        size = worker.size_bytes
        budget = room.holdings.budget
        if size != budget.size_of(slot):
            room.holdings.follow(slot, CPU, size)  # the truth, even before room is made for it
            if room.holdings.budgets.home(slot) in (None, CPU):  # a GPU model: its GPU charge
                slot.measured(size)
        # Its growth does not fit: evict idle models; if nothing can make the room, recycle it.
        grown = size > worker.reserved and budget.used > budget.limit
        no_room = grown and not room.make_room_for(slot, size)
        margin = room.settings.worker_memory_margin
        leaking = worker.private_bytes > worker.reserved * (1 + margin)
        if not (leaking or no_room) or slot.leases or slot.retirement.unload_requested:
            return
        slot.stats.record_recycle()
        log.warning(
            "recycling the worker of %s (pid %s): its private memory %s grew past %s; recycle #%d",
            slot.name,
            worker.pid,
            format_bytes(worker.private_bytes),
            f"its reservation {format_bytes(worker.reserved)} by more than "
            f"worker_memory_margin ({margin:g})"
            if leaking
            else f"what the {format_bytes(budget.limit)} budget can make room for",
            slot.stats.recycles,
        )
        slot.measured(None)  # measure again on the fresh worker
        grew = "its reservation" if leaking else "the room the budget has"
        room.start_unload(
            slot, f"recycled: its worker's memory grew past {grew}", reason=UnloadReason.RECYCLE
        )
        room.spawn(self._reload_after(slot), name=f"recycle {slot.name}")

    async def _reload_after(self, slot: Slot) -> None:
        task = slot.unload_task
        if task is not None:
            await task
        if slot.state is State.UNLOADED and not slot.retirement.retired and not self._room.closing:
            self._start_load(slot)


async def _log_idle_death(name: str, worker: WorkerHandle, freed: int) -> None:
    how = await run_in_thread(worker.reap, name=f"reap-{name}")
    log.error(
        "the worker of %s (pid %s) died while idle: %s; unloaded it and released %s; "
        "the next request loads it again",
        name,
        worker.pid,
        how,
        format_bytes(freed),
    )


def _queued_error(slot: Slot, how: str) -> ModelFailed:
    """What a request queued behind a dead worker gets: 503, retry after the backoff."""
    return ModelFailed(
        slot.name,
        f"its worker process died ({how}) before this request ran; it reloads on a later request",
        retry_after=max(1.0, slot.retry_at - time.monotonic()),
        what="lost its worker",
    )
