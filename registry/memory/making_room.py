"""Making room: reserving a load's bytes, choosing and evicting victims, unloading.

`Room` is an object the lifecycle owns (registry/lifecycle.py): everything that decides
which models hold the budgets' bytes and how they give them back. It writes the memory
state only through its `Holdings` (registry/memory/holdings.py), and knows nothing of the
lifecycle: it gets the settings, the devices, the shared `Plumbing` (tasks, wake-ups, the
closing flag), the event bus and the stats.
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
- What a model holds on its GPU follows what it measures there (registry/memory/gpu_charges.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from registry.config.schema import ServerSettings
from registry.errors import CapacityExceeded, ModelTooLarge
from registry.events import EventBus, UnloadReason
from registry.loaders import Model
from registry.loaders.interface import worker_of
from registry.memory.devices import CPU, Device, is_gpu
from registry.memory.gpu_charges import gpu_bytes_now, server_overhead
from registry.memory.holdings import Holdings
from registry.memory.host_tier import may_offload, start_offload
from registry.memory.lowered_budget import over_budget
from registry.memory.placement import Charge
from registry.memory.policy import describe
from registry.memory.unloading import Unloads
from registry.model_calls import dispose
from registry.plumbing import Plumbing
from registry.slot import Slot, State
from registry.stats import Stats
from registry.threads import run_in_thread
from registry.units import format_bytes

log = logging.getLogger("registry")


class Room:
    """The budget side of the lifecycle (see the module docstring)."""

    def __init__(
        self,
        settings: ServerSettings,
        devices: Mapping[str, Device],
        holdings: Holdings,
        plumbing: Plumbing,
        events: EventBus,
        stats: Stats,
    ) -> None:
        self._settings = settings
        self._devices = dict(devices)
        self._holdings = holdings
        self._plumbing = plumbing
        self._events = events
        self._stats = stats
        self._reserving: set[Slot] = set()  # loads inside reserve(), waiting for room
        # Loads waiting for room in the order they asked, with the device they wait on;
        # True: it cannot make room now (nothing idle enough to evict), so it does not hold
        # up those behind it.
        self._in_line: dict[Slot, tuple[str, bool]] = {}
        self._unloads = Unloads(self._devices, holdings, plumbing, events, stats)

    # ------------------------------------------------------------------- readers

    @property
    def settings(self) -> ServerSettings:
        """The server settings in force (a reload replaces them: use_settings)."""
        return self._settings

    def use_settings(self, settings: ServerSettings) -> None:
        """A reloaded models.yaml's server settings."""
        self._settings = settings

    @property
    def devices(self) -> Mapping[str, Device]:
        """The devices, by name (discovered once)."""
        return self._devices

    @property
    def holdings(self) -> Holdings:
        """Who holds which bytes (the one writer of the budgets)."""
        return self._holdings

    @property
    def closing(self) -> bool:
        """Whether shutdown has begun."""
        return self._plumbing.closing

    @property
    def events(self) -> EventBus:
        """The stream of model events."""
        return self._events

    @property
    def stats(self) -> Stats:
        """Per-model figures."""
        return self._stats

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start a task kept referenced until it ends."""
        return self._plumbing.spawn(coro, name=name)

    def notify(self) -> None:
        """Wake everything waiting for a state change."""
        self._plumbing.notify()

    def busy_eta(self, slot: Slot) -> float:
        """Seconds until a busy model probably has room for one more request."""
        per_call = slot.stats.infer_seconds or 0.05
        workers = self._holdings.workers
        return math.ceil(per_call * (slot.waiting + slot.leases) / workers + 0.5)

    # ----------------------------------------------------------------- reserving

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
        wait = self._settings.capacity_wait
        asked = time.monotonic()
        stuck_since: float | None = None  # since when nothing could be evicted for it
        budgets = self._holdings.budgets
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
                    self._holdings.reserve(slot, device, nbytes, host_bytes=host_bytes)
                    return
                if patient > 0 and (ahead or (not replacing and self._loads_running(slot))):
                    # Evict only once the running load has served its waiters: what is idle
                    # then is really idle, not a model whose next request is on its way.
                    await self._plumbing.wait_changed(patient)
                    continue
                victims, short = self._victims_for(slot, wanted, own)
                if not replacing:  # cannot make room now: let the loads behind it try
                    self._in_line[slot] = (device, victims is None)
                self.evict(victims or [], f"to fit {slot.name}")
                if victims is not None:
                    stuck_since = None
                    await self._plumbing.wait_changed(1.0)
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
                await self._plumbing.wait_changed(left)
        finally:
            self._reserving.discard(slot)
            if not replacing and self._in_line.pop(slot, None) is not None and self._in_line:
                self.notify()  # the next load in line may go now

    async def settle_size(self, slot: Slot, model: Model, charge: Charge) -> None:
        """Replace the estimate with the measured charge, making room if it grew."""
        slot.measured(charge.nbytes)  # kept even if it does not fit: the next try reserves it
        try:
            limit = self._holdings.budgets.budget(charge.device).limit
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
            self._holdings.release(slot)
            await run_in_thread(functools.partial(dispose, (model, None)), name="dispose")
            raise

    def _victims_for(
        self, slot: Slot, wanted: dict[str, int], mine: Slot | None
    ) -> tuple[list[Slot] | None, str]:
        """The victims that make each of `wanted`'s bytes fit on its device (each chosen
        among the models at home there), or None and the device where no room can be made."""
        chosen: list[Slot] = []
        for device, nbytes in wanted.items():
            victims = self._holdings.budgets.victims(
                device,
                nbytes,
                evictable=lambda s: s.evictable,
                freeing=self.freeing(),
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
        victims = self._holdings.budgets.victims(
            device,
            nbytes,
            evictable=lambda s: s is not slot and s.evictable,
            freeing=self.freeing(),
            replacing=slot,
        )
        if victims is None:
            return False
        where = "" if device == CPU else f" on {device}"
        self.evict(
            victims,
            f"to make room for {slot.name}, whose worker grew to {format_bytes(nbytes)}{where}",
        )
        return True

    def _loads_running(self, slot: Slot) -> bool:
        """Whether another model's loader runs now (its bytes reserved, not waiting for room)."""
        return any(
            s is not slot and s.state is State.LOADING and s not in self._reserving
            for s in self._holdings.held()
        )

    def evict(
        self, victims: Sequence[Slot], purpose: str, reason: UnloadReason | None = None
    ) -> None:
        """Unload `victims`; each log line says why the policy chose it."""
        if not victims:
            return
        budgets = self._holdings.budgets
        policy = self._holdings.budget.policy
        if reason is None:
            reason = UnloadReason.COST if policy == "cost" else UnloadReason.LRU
        for victim in victims:
            device = budgets.home(victim) or CPU  # its own device's
            budget = budgets.budget(device)
            order = [s for s in budget.keys_lru_first() if s.evictable]
            priority = budget.priority(victim) or 0.0
            rank = order.index(victim) + 1 if victim in order else 1
            why = describe(policy, priority, rank, len(order))
            self._holdings.evicted(victim, device)
            if may_offload(self, victim):  # the host-RAM tier keeps it (memory/host_tier.py)
                start_offload(self, victim, why, reason, purpose)
            else:
                self.start_unload(victim, why, reason=reason, purpose=purpose)

    def freeing(self) -> list[Slot]:
        """Models whose bytes are about to be released (a copy to host memory releases its
        GPU bytes; its host bytes are already reserved, so counting them is only optimistic:
        reservations check what is really held)."""
        going = (State.UNLOADING, State.OFFLOADING)
        return [s for s in self._holdings.held() if s.state in going]

    def enforce_limit(self) -> None:
        """After a budget shrank: unload models until each device's total fits again
        (memory/lowered_budget.py)."""
        budgets = self._holdings.budgets
        for device in budgets.devices:
            idle, busy = over_budget(budgets.budget(device))
            self.evict(idle, "because the memory budget was lowered", UnloadReason.BUDGET)
            for slot in busy:  # no new lease; unloads once its in-flight requests end
                self.request_unload(slot, UnloadReason.BUDGET)

    # ----------------------------------------------------------------- unloading

    def request_unload(self, slot: Slot, reason: UnloadReason) -> None:
        """Unload the model once no request holds it (registry/memory/unloading.py)."""
        self._unloads.request_unload(slot, reason)

    def unload_when_idle(self, slot: Slot) -> None:
        """A model on its way out unloads as soon as no request holds it."""
        self._unloads.unload_when_idle(slot)

    def start_unload(
        self,
        slot: Slot,
        why: str,
        *,
        reason: UnloadReason,
        quiet: bool = False,
        purpose: str | None = None,
    ) -> None:
        """Start unloading a loaded (or offloaded) model (Unloads.start_unload)."""
        self._unloads.start_unload(slot, why, reason=reason, quiet=quiet, purpose=purpose)

    async def unload_everything(self, slots: list[Slot], grace: float) -> tuple[int, int]:
        """Shutdown, once the loads are cancelled (Unloads.unload_everything)."""
        return await self._unloads.unload_everything(slots, grace)

    # ------------------------------------------------------------ what GPUs hold

    def follow_gpu(self, slot: Slot) -> None:
        """After a request: the model's GPU charge follows what it holds there, making room on
        that GPU for growth (idle models there are evicted; nothing elsewhere)."""
        budgets = self._holdings.budgets
        home = budgets.home(slot)
        model = slot.model
        if home is None or not is_gpu(home) or model is None:
            return
        held = gpu_bytes_now(self._devices, model, home)
        budget = budgets.budget(home)
        if held is None or held == budget.size_of(slot):
            return
        self._holdings.follow(slot, home, held)  # the truth, even before room is made for it
        slot.measured(held)
        if budget.used > budget.limit:
            self.make_room_for(slot, held, home)

    def measure_overhead(self, slot: Slot) -> None:
        """Once per GPU, after the first thread model loaded there: the server's own bytes on
        it, less what its thread models are charged, become the device's fixed overhead."""
        home = self._holdings.budgets.home(slot)
        if home is None or not is_gpu(home) or worker_of(slot.model) is not None:
            return
        if self._holdings.overhead_known(home):
            return
        overhead = server_overhead(self._holdings.budgets, self._devices, home)
        self._holdings.set_overhead(home, overhead)
        if overhead is not None:
            self.enforce_limit()
