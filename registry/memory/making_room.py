"""Making room: reserving a load's bytes, choosing and evicting victims, unloading.

Part of the lifecycle (Lifecycle inherits it), kept apart because it is one job: everything
that decides which models hold the budgets' bytes and how they give them back.
- Each device has its own budget (registry/memory/device_budgets.py): a load is placed on one of
  its devices (registry/memory/placement.py) and evicts only models at home on the device that
  needs the room; no device's reservations ever exceed its budget.
- A load reserves its bytes; when they do not fit, idle models are evicted in the policy's
  order (registry/memory/policy.py), only as many as the room needs; a load that must evict waits
  until no other load runs, so that load's model serves its waiting requests first.
- Loads take room in the order they asked for it: a later load, even one that fits, does
  not go ahead of an earlier one that can make room (else a big load starves behind small
  ones, and the room its victims free goes to others).
- A lowered budget unloads idle models at once and busy ones after their last request.
- An unload runs in a thread and releases the bytes when the model is really gone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from registry.config.schema import ServerSettings
from registry.errors import CapacityExceeded, ModelTooLarge
from registry.events import EventBus, EventKind, UnloadReason
from registry.loaders import Model
from registry.memory.budget import ByteBudget
from registry.memory.device_budgets import DeviceBudgets
from registry.memory.devices import CPU, Device
from registry.memory.gpu_charges import left_on_gpu
from registry.memory.host_tier import may_offload, start_offload
from registry.memory.lowered_budget import over_budget
from registry.memory.placement import Charge
from registry.memory.policy import describe
from registry.process.proxy import ProcessModel
from registry.slot import HOLDING, Slot, State
from registry.stats import Stats
from registry.stuck_calls import dispose
from registry.threads import InferencePool, run_in_thread
from registry.units import format_bytes, format_duration

log = logging.getLogger("registry")


class Room:
    """The budget side of the lifecycle (see the module docstring); Lifecycle provides the
    state and the plumbing declared here."""

    budget: ByteBudget[Slot]  # the host's
    budgets: DeviceBudgets[Slot]
    devices: dict[str, Device]
    settings: ServerSettings
    pool: InferencePool
    events: EventBus
    stats: Stats
    unused_loads: int
    _reserving: set[Slot]
    _in_line: dict[Slot, tuple[str, bool]]

    @property
    def closing(self) -> bool:
        """Whether shutdown has begun (Lifecycle.closing)."""
        raise NotImplementedError

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start a task that the lifecycle keeps referenced (Lifecycle.spawn)."""
        raise NotImplementedError

    def notify(self) -> None:
        """Wake everything waiting for a state change (Lifecycle.notify)."""
        raise NotImplementedError

    async def wait_changed(self, seconds: float | None) -> None:
        """Wait for the next state change (Lifecycle.wait_changed)."""
        raise NotImplementedError

    def busy_eta(self, slot: Slot) -> float:
        """Seconds until a busy model has room (Lifecycle.busy_eta)."""
        raise NotImplementedError

    def record_peak(self) -> None:
        """Remember the peak of bytes held (Lifecycle.record_peak)."""
        raise NotImplementedError

    def load_tasks(self) -> list[asyncio.Task[Any]]:
        """Loads running now (Lifecycle.load_tasks)."""
        raise NotImplementedError

    async def unload_all(self, slots: list[Slot], grace: float) -> tuple[int, int]:
        """Shutdown: cancel running loads (retired slots' too; nobody waits for them now),
        then unload every loaded model but thread models inside a call (a worker inside
        one is ended), waiting at most `grace` seconds.
        Returns the models unloaded and the bytes they held."""
        loads = self.load_tasks()
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        # A copy to host memory under way ends first; its model is unloaded after it.
        offloads = [s.unload_task for s in slots if s.state is State.OFFLOADING and s.unload_task]
        if offloads:
            await asyncio.wait(offloads, timeout=grace)
        unloaded, freed = 0, 0
        for slot in slots:
            if slot.batcher is not None:
                slot.batcher.cancel()
            # Never close a thread model under a call; a worker under one can be ended.
            killable = isinstance(slot.model, ProcessModel)
            if slot.state in HOLDING and (slot.leases == 0 or killable):
                freed += sum(self.budgets.holdings(slot).values())
                unloaded += 1
                self.start_unload(slot, "shutdown", reason=UnloadReason.SHUTDOWN, quiet=True)
        unloads = [s.unload_task for s in slots if s.unload_task is not None]
        if unloads:
            _, stuck = await asyncio.wait(unloads, timeout=grace)
            if stuck:
                log.error("shutdown: gave up waiting for %d unload(s)", len(stuck))
        return unloaded, freed

    def reload_seconds(self, slot: Slot) -> float:
        """What loading the model again costs: its last load time, else a guess."""
        seconds = slot.stats.load_seconds
        if seconds is not None:
            return max(seconds, 0.001)
        return 0.5 + (slot.size_bytes or slot.estimate or 0) / 200e6  # ~200 MB/s

    async def reserve(
        self,
        slot: Slot,
        nbytes: int,
        *,
        replacing: bool = False,
        device: str = CPU,
        host_bytes: int = 0,
    ) -> None:
        """Reserve `nbytes` for `slot` on `device` (and, on a GPU, `host_bytes` for its
        host-side part), evicting idle models on the device that needs the room (never on
        another); CapacityExceeded, naming the device, once it has found nothing to evict
        for capacity_wait.

        Loads take room in the order they asked for it (`_ahead`, per device): a later load
        does not take free room, nor the bytes of victims evicted for an earlier one, while
        that earlier one can still make room; so a load that must evict waits only for the
        loads already running when it asked, never for a stream of smaller ones. Waiting
        in line and for running loads lasts at most capacity_wait; only then does the
        capacity_wait with nothing to evict begin (so a load is not refused for the time
        it spent behind others that were making progress).
        """
        wait = self.settings.capacity_wait
        asked = time.monotonic()
        stuck_since: float | None = None  # since when nothing could be evicted for it
        budgets = self.budgets
        # A restore from host memory replaces what the offloaded model holds on the host.
        own = slot if replacing or slot.model is not None else None
        if not replacing and slot.model is not None and device != CPU:
            # A restore from host memory: its weights stay on the host until the copy ends
            # (the measured size settled after it gives the rest back).
            host_bytes = max(host_bytes, budgets.holdings(slot).get(CPU, 0))
        wanted = {device: nbytes} if device == CPU else {device: nbytes, CPU: host_bytes}
        self._reserving.add(slot)
        if not replacing:  # a loaded model settling its measured size is not in line
            self._in_line[slot] = (device, False)
        try:
            while True:
                now = time.monotonic()
                patient = asked + wait - now  # > 0: it keeps its place in line
                ahead = not replacing and patient > 0 and self._ahead(slot)
                fits = all(budgets.fits(d, n, replacing=own) for d, n in wanted.items())
                if not ahead and fits:
                    budgets.reserve(slot, device, nbytes, host_bytes=host_bytes)
                    self.record_peak()
                    return
                if patient > 0 and (ahead or (not replacing and self._loads_running(slot))):
                    # Evict only once the running load has served its waiters: what is idle
                    # then is really idle, not a model whose next request is on its way.
                    await self.wait_changed(patient)
                    continue
                victims, short = self._victims_for(slot, wanted, own)
                if not replacing:  # cannot make room now: let the loads behind it try
                    self._in_line[slot] = (device, victims is None)
                self._evict(victims or [], f"to fit {slot.name}")
                if victims is not None:
                    stuck_since = None
                    await self.wait_changed(1.0)
                    continue
                stuck_since = now if stuck_since is None else stuck_since
                left = stuck_since + wait - now
                if left <= 0:
                    budget = budgets.budget(short)
                    raise CapacityExceeded(
                        slot.name,
                        wanted[short],
                        budget.used - (budget.size_of(slot) if replacing else 0),
                        budget.limit,
                        retry_after=self.busy_eta(slot),
                        device=short,
                    )
                await self.wait_changed(left)
        finally:
            self._reserving.discard(slot)
            if not replacing and self._in_line.pop(slot, None) is not None and self._in_line:
                self.notify()  # the next load in line may go now

    async def settle_size(self, slot: Slot, model: Model, charge: Charge) -> None:
        """Replace the estimate with the measured charge, making room if it grew."""
        slot.measured(charge.nbytes)  # kept even if it does not fit: the next try reserves it
        try:
            limit = self.budgets.budget(charge.device).limit
            if charge.nbytes > limit:
                raise ModelTooLarge(
                    slot.name, charge.nbytes, limit, measured=True, device=charge.device
                )
            await self.reserve(
                slot,
                charge.nbytes,
                replacing=True,
                device=charge.device,
                host_bytes=charge.host_bytes,
            )
        except BaseException:
            self.budgets.release(slot)
            await run_in_thread(functools.partial(dispose, (model, None)), name="dispose")
            raise

    def _victims_for(
        self, slot: Slot, wanted: dict[str, int], mine: Slot | None
    ) -> tuple[list[Slot] | None, str]:
        """The victims that make each of `wanted`'s bytes fit on its device (each chosen
        among the models at home there), or None and the device where no room can be made."""
        chosen: list[Slot] = []
        for device, nbytes in wanted.items():
            victims = self.budgets.victims(
                device,
                nbytes,
                evictable=lambda s: s.evictable,
                freeing=self._unloading(),
                replacing=mine,
            )
            if victims is None:
                return None, device
            chosen += [victim for victim in victims if victim not in chosen]
        return chosen, next(iter(wanted))

    def _ahead(self, slot: Slot) -> bool:
        """Whether a load that asked for room on the same device before `slot` still waits
        and can make it (one that found nothing to evict does not hold the line)."""
        device = self._in_line[slot][0] if slot in self._in_line else CPU
        for other, (where, stuck) in self._in_line.items():
            if other is slot:
                return False
            if where == device and not stuck:
                return True
        return False

    def make_room_for(self, slot: Slot, nbytes: int, device: str = CPU) -> bool:
        """A loaded model now holds `nbytes` on `device` (a worker's measured growth): evict
        idle models there until that fits, counting unloads under way; False if nothing can
        make the room."""
        victims = self.budgets.victims(
            device,
            nbytes,
            evictable=lambda s: s is not slot and s.evictable,
            freeing=self._unloading(),
            replacing=slot,
        )
        if victims is None:
            return False
        where = "" if device == CPU else f" on {device}"
        self._evict(
            victims,
            f"to make room for {slot.name}, whose worker grew to {format_bytes(nbytes)}{where}",
        )
        return True

    def held(self) -> list[Slot]:
        """Every model holding or reserving bytes on any device."""
        found: dict[int, Slot] = {}
        for device in self.budgets.devices:
            for slot in self.budgets.budget(device).keys_lru_first():
                found.setdefault(id(slot), slot)
        return list(found.values())

    def _loads_running(self, slot: Slot) -> bool:
        """Whether another model's loader runs now (its bytes reserved, not waiting for room)."""
        return any(
            s is not slot and s.state is State.LOADING and s not in self._reserving
            for s in self.held()
        )

    def _evict(
        self, victims: Sequence[Slot], purpose: str, reason: UnloadReason | None = None
    ) -> None:
        """Unload `victims`; each log line says why the policy chose it."""
        if not victims:
            return
        policy = self.budget.policy
        if reason is None:
            reason = UnloadReason.COST if policy == "cost" else UnloadReason.LRU
        for victim in victims:
            budget = self.budgets.budget(self.budgets.home(victim) or CPU)  # its own device's
            order = [s for s in budget.keys_lru_first() if s.evictable]
            priority = budget.priority(victim) or 0.0
            rank = order.index(victim) + 1 if victim in order else 1
            why = describe(policy, priority, rank, len(order))
            budget.evicted(victim)
            if may_offload(
                self, victim
            ):  # the host-RAM tier keeps it (registry/memory/host_tier.py)
                start_offload(self, victim, why, reason, purpose)
            else:
                self.start_unload(victim, why, reason=reason, purpose=purpose)

    def _unloading(self) -> list[Slot]:
        """Models whose bytes are about to be released (a copy to host memory releases its
        GPU bytes; its host bytes are already reserved, so counting them is only optimistic:
        reservations check what is really held)."""
        going = (State.UNLOADING, State.OFFLOADING)
        return [s for s in self.held() if s.state in going]

    def enforce_limit(self) -> None:
        """After a budget shrank: unload models until each device's total fits again
        (memory/lowered_budget.py)."""
        for device in self.budgets.devices:
            idle, busy = over_budget(self.budgets.budget(device))
            self._evict(idle, "because the memory budget was lowered", UnloadReason.BUDGET)
            for slot in busy:  # no new lease; unloads once its in-flight requests end
                self.request_unload(slot, UnloadReason.BUDGET)

    # ----------------------------------------------------------------- unloading

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
        slot.begin_unload(self.spawn(unload, name=f"unload {slot.name}"))

    async def _unload(
        self, slot: Slot, why: str, reason: UnloadReason, quiet: bool, purpose: str | None
    ) -> None:
        started = time.monotonic()
        model, thread = slot.drop_model()
        held = self.budgets.holdings(slot)
        size = sum(held.values())
        home = self.budgets.home(slot)
        idle = time.monotonic() - slot.stats.last_used_mono
        if slot.stats.unused and why != "shutdown":
            self.unused_loads += 1
        try:
            await run_in_thread(
                functools.partial(dispose, (model, None)), name=f"unload-{slot.name}"
            )
        except Exception:
            log.exception("error while unloading %s (its bytes are released anyway)", slot.name)
        finally:
            self.pool.retire(thread)
            self.budgets.release(slot)
            slot.unloaded()
            self.notify()
        verb = "evicted" if reason.eviction else "unloaded"
        seconds = time.monotonic() - started
        self.stats.of(slot.name).record_unload(reason, seconds)
        kind = EventKind.EVICTED if reason.eviction else EventKind.UNLOADED
        left = left_on_gpu(self.devices, model, home)  # a worker's bytes on its GPU: gone, checked
        extra = {} if left is None else {"device_left_bytes": left}
        self.events.emit(
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
