"""Who holds which bytes: the one writer of the memory state.

The device budgets (registry/memory/device_budgets.py), the peak of bytes held, the threads
the registry stopped waiting for (registry/abandoned.py, whose bytes stay held until they
end) and the retirement of the pool's model threads change here only, each by a named
method; everything else reads them through the read-only properties. The lifecycle owns
one `Holdings` and hands it to the parts it owns (making room, the host tier, the worker
supervision, the stuck calls); none of them writes a budget but through it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from registry.abandoned import Abandoned, AbandonedThread
from registry.memory.budget import ByteBudget
from registry.memory.device_budgets import DeviceBudgets
from registry.memory.devices import CPU
from registry.memory.policy import Policy
from registry.slot import Slot, State
from registry.threads import InferencePool, ModelThread
from registry.units import format_bytes

log = logging.getLogger("registry")


def reload_seconds(slot: Slot) -> float:
    """What loading the model again costs: its last load time, else a guess."""
    seconds = slot.stats.load_seconds
    if seconds is not None:
        return max(seconds, 0.001)
    return 0.5 + (slot.size_bytes or slot.estimate or 0) / 200e6  # ~200 MB/s


class Holdings:
    """The budgets, the peak, the abandoned threads and the pool's retired threads."""

    def __init__(self, limits: Mapping[str, int], policy: Policy, pool: InferencePool) -> None:
        self._budgets: DeviceBudgets[Slot] = DeviceBudgets(limits, policy, reload_seconds)
        self._pool = pool
        self._peak_used = 0
        self._unused_loads = 0  # loads unloaded again before they served a single request
        self._abandoned = Abandoned()
        self._overhead_measured: set[str] = set()  # GPUs whose server overhead is known

    # ------------------------------------------------------------------- readers

    @property
    def budgets(self) -> DeviceBudgets[Slot]:
        """Every device's budget, to read (its writes go through this object)."""
        return self._budgets

    @property
    def budget(self) -> ByteBudget[Slot]:
        """The host's budget, to read."""
        return self._budgets.budget(CPU)

    @property
    def peak_used(self) -> int:
        """The most bytes ever held or reserved at once on the host."""
        return self._peak_used

    @property
    def unused_loads(self) -> int:
        """Loads unloaded again before they served a single request."""
        return self._unused_loads

    @property
    def abandoned(self) -> tuple[AbandonedThread, ...]:
        """The threads the registry stopped waiting for, oldest first."""
        return tuple(self._abandoned)

    @property
    def workers(self) -> int:
        """How many calls the inference pool runs at once."""
        return self._pool.workers

    def held(self) -> list[Slot]:
        """Every model holding or reserving bytes on any device."""
        found: dict[int, Slot] = {}
        for device in self._budgets.devices:
            for slot in self._budgets.budget(device).keys_lru_first():
                found.setdefault(id(slot), slot)
        return list(found.values())

    def overhead_known(self, device: str) -> bool:
        """Whether the server's own footprint on GPU `device` was measured already."""
        return device in self._overhead_measured

    # ------------------------------------------------------------------- writers

    def set_limit(self, device: str, limit: int) -> None:
        """A reload changed the device's budget."""
        self._budgets.set_limit(device, limit)

    def set_overhead(self, device: str, nbytes: int | None) -> None:
        """The server's own footprint on GPU `device` (None: it cannot be told), once."""
        self._overhead_measured.add(device)
        if nbytes is not None:
            self._budgets.set_overhead(device, nbytes)

    def reserve(self, slot: Slot, device: str, nbytes: int, *, host_bytes: int = 0) -> None:
        """Hold `nbytes` for `slot` on `device` (and `host_bytes` on the host); the caller
        checked that they fit."""
        self._budgets.reserve(slot, device, nbytes, host_bytes=host_bytes)
        self.record_peak()

    def follow(self, slot: Slot, device: str, nbytes: int) -> None:
        """`slot` was measured to hold `nbytes` on `device`, even past the limit (the caller
        makes room or recycles it)."""
        self._budgets.budget(device).follow(slot, nbytes)
        self.record_peak()

    def move_home(self, slot: Slot, device: str) -> None:
        """`slot` lives on `device` alone now (a copy to host memory has ended)."""
        self._budgets.move_home(slot, device)

    def release(self, slot: Slot) -> dict[str, int]:
        """`slot` holds nothing any more; the bytes it held on each device."""
        return self._budgets.release(slot)

    def touch(self, slot: Slot) -> None:
        """A use of `slot` on every device it holds bytes on (a load, a restore)."""
        self._budgets.touch(slot)

    def used(self, slot: Slot) -> None:
        """A request took or gave back a lease on `slot` (the host's policy counts it)."""
        self.budget.touch(slot)

    def evicted(self, slot: Slot, device: str) -> None:
        """The policy of `device` evicts `slot` (the cost policy's clock rises to it)."""
        self._budgets.budget(device).evicted(slot)

    def record_peak(self) -> None:
        """Remember the most bytes ever held or reserved at once (on the host)."""
        self._peak_used = max(self._peak_used, self.budget.used)

    def count_unused(self) -> None:
        """A model is unloaded before it served a single request."""
        self._unused_loads += 1

    def retire_thread(self, thread: ModelThread | None) -> None:
        """A model is gone: its pool thread ends once its last job is done."""
        self._pool.retire(thread)

    def forget(self, slot: Slot) -> int:
        """A held model is gone (or being let go of; the caller closes it): off the slot, its
        thread retired, its bytes released; the bytes it held."""
        _, thread = slot.drop_model()
        self.retire_thread(thread)
        return sum(self.release(slot).values())

    def abandon(self, slot: Slot, kind: str, why: str) -> AbandonedThread:
        """The registry stops waiting for one of `slot`'s threads; its bytes stay held."""
        return self._abandoned.add(slot, kind, why)

    def reclaim(self, record: AbandonedThread) -> None:
        """An abandoned thread has ended: give back its model's bytes if nothing else holds
        them (the caller wakes the waiters)."""
        slot = record.slot
        last = self._abandoned.ended(record)
        idle = slot.state in (State.UNLOADED, State.FAILED) and slot.load_task is None
        if last and idle:
            freed = sum(self.release(slot).values())
            log.info(
                "the abandoned %s thread of %s ended; released %s",
                record.kind,
                slot.name,
                format_bytes(freed),
            )
