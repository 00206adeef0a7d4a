"""Which models go when a reload lowers the memory budget below what is loaded."""

from __future__ import annotations

from registry.memory.budget import ByteBudget
from registry.slot import HOLDING, Slot, State


def over_budget(budget: ByteBudget[Slot]) -> tuple[list[Slot], list[Slot]]:
    """(idle models to unload now, busy ones to unload once their requests end).

    Idle models go first, least recently used first, then models in use, until what stays
    fits under the limit; models already unloading or marked count as gone. Pinned models
    stay.
    """
    excess = budget.used - budget.limit
    if excess <= 0:
        return [], []
    order = budget.keys_lru_first()
    for slot in order:
        if slot.state is State.UNLOADING or slot.retirement.unload_requested:
            excess -= budget.size_of(slot)
    candidates = [
        s
        for s in order
        if s.state in HOLDING and not s.spec.pinned and not s.retirement.unload_requested
    ]
    candidates.sort(key=lambda s: not s.evictable)  # stable: idle first, each LRU first
    idle: list[Slot] = []
    busy: list[Slot] = []
    for slot in candidates:
        if excess <= 0:
            break
        excess -= budget.size_of(slot)
        (idle if slot.evictable else busy).append(slot)
    return idle, busy
