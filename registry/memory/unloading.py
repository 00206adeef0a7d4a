"""Unloading: a model gives its bytes back once it is really gone.

- An unload runs in a thread (the model's close()) and releases the bytes when it has ended;
  its event and log line say why (an eviction's purpose ends the line).
- A model on its way out (retired from models.yaml, an unload asked for, a lowered budget)
  unloads as soon as no request holds it.
- Shutdown unloads every loaded model but thread models inside a call (a worker inside one
  is ended).

Owned by the room (registry/memory/making_room.py); it writes the memory state through the
`Holdings` (registry/memory/holdings.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping

from registry.events import EventBus, EventKind, UnloadReason
from registry.loaders.interface import worker_of
from registry.memory.devices import Device
from registry.memory.gpu_charges import left_on_gpu
from registry.memory.holdings import Holdings
from registry.model_calls import dispose
from registry.plumbing import Plumbing
from registry.slot import HOLDING, Slot, State
from registry.stats import Stats
from registry.threads import run_in_thread
from registry.units import format_bytes, format_duration

log = logging.getLogger("registry")


class Unloads:
    """Starts unloads and ends them (see the module docstring)."""

    def __init__(
        self,
        devices: Mapping[str, Device],
        holdings: Holdings,
        plumbing: Plumbing,
        events: EventBus,
        stats: Stats,
    ) -> None:
        self._devices = devices
        self._holdings = holdings
        self._plumbing = plumbing
        self._events = events
        self._stats = stats

    def request_unload(self, slot: Slot, reason: UnloadReason) -> None:
        """Unload the model (an admin's request, or a lowered budget's) once no request
        holds it: no new lease from now on; now if it is idle, else after the last lease."""
        slot.retirement.request_unload(reason)
        self.unload_when_idle(slot)

    def unload_when_idle(self, slot: Slot) -> None:
        """The one rule for a model on its way out (retired from models.yaml, or an unload
        requested): it unloads as soon as no request holds it. Called whenever that may have
        become true: a lease ended, a load finished, the model was retired."""
        if slot.retirement.due and slot.state in HOLDING and slot.leases == 0:
            why, reason = slot.retirement.why()
            self.start_unload(slot, why, reason=reason)

    def start_unload(
        self,
        slot: Slot,
        why: str,
        *,
        reason: UnloadReason,
        quiet: bool = False,
        purpose: str | None = None,
    ) -> None:
        """Start unloading a loaded (or offloaded) model; `why` is for people, `reason` for
        the stream, and `purpose` (an eviction's) ends its log line."""
        if slot.state not in HOLDING:
            return
        unload = self._unload(slot, why, reason, quiet, purpose)
        slot.begin_unload(self._plumbing.spawn(unload, name=f"unload {slot.name}"))

    async def _unload(
        self, slot: Slot, why: str, reason: UnloadReason, quiet: bool, purpose: str | None
    ) -> None:
        started = time.monotonic()
        model, thread = slot.drop_model()
        held = self._holdings.budgets.holdings(slot)
        size = sum(held.values())
        home = self._holdings.budgets.home(slot)
        idle = time.monotonic() - slot.stats.last_used_mono
        if slot.stats.unused and why != "shutdown":
            self._holdings.count_unused()
        try:
            await run_in_thread(
                functools.partial(dispose, (model, None)), name=f"unload-{slot.name}"
            )
        except Exception:
            log.exception("error while unloading %s (its bytes are released anyway)", slot.name)
        finally:
            self._holdings.retire_thread(thread)
            self._holdings.release(slot)
            slot.unloaded()
            self._plumbing.notify()
        verb = "evicted" if reason.eviction else "unloaded"
        seconds = time.monotonic() - started
        self._stats.of(slot.name).record_unload(reason, seconds)
        kind = EventKind.EVICTED if reason.eviction else EventKind.UNLOADED
        left = left_on_gpu(self._devices, model, home)  # a worker's bytes on its GPU: gone, checked
        extra = {} if left is None else {"device_left_bytes": left}
        self._events.emit(
            kind,
            slot.name,
            reason=reason.value,
            freed_bytes=size,
            seconds=seconds,
            device=home,
            **extra,
        )
        (log.debug if quiet else log.info)(
            f"{verb} %s (%s, idle %s, %s)%s",
            slot.name,
            format_bytes(size),
            format_duration(idle),
            why,
            "" if purpose is None else f" {purpose}",
        )

    async def unload_everything(self, slots: list[Slot], grace: float) -> tuple[int, int]:
        """Shutdown, once the loads are cancelled: unload every loaded model but thread models
        inside a call (a worker inside one is ended), waiting at most `grace` seconds.
        Returns the models unloaded and the bytes they held."""
        # A copy to host memory under way ends first; its model is unloaded after it.
        offloads = [s.unload_task for s in slots if s.state is State.OFFLOADING and s.unload_task]
        if offloads:
            await asyncio.wait(offloads, timeout=grace)
        unloaded, freed = 0, 0
        for slot in slots:
            if slot.batcher is not None:
                slot.batcher.cancel()
            # Never close a thread model under a call; a worker under one can be ended.
            killable = worker_of(slot.model) is not None
            if slot.state in HOLDING and (slot.leases == 0 or killable):
                freed += sum(self._holdings.budgets.holdings(slot).values())
                unloaded += 1
                self.start_unload(slot, "shutdown", reason=UnloadReason.SHUTDOWN, quiet=True)
        unloads = [s.unload_task for s in slots if s.unload_task is not None]
        if unloads:
            _, stuck = await asyncio.wait(unloads, timeout=grace)
            if stuck:
                log.error("shutdown: gave up waiting for %d unload(s)", len(stuck))
        return unloaded, freed
