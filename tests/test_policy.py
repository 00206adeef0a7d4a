"""Eviction policies (registry/memory/policy.py) and the minimal victim set, on hand-built cases."""

from __future__ import annotations

import pytest
from support import anything

from registry.memory.budget import ByteBudget
from registry.memory.policy import CostOrder, describe

MIB = 1024 * 1024


def test_victims_give_back_picks_the_room_does_not_need() -> None:
    """Evict only what is needed (the bert-memory-demo case: minilm alone is enough)."""
    budget: ByteBudget[str] = ByteBudget(300)
    budget.reserve("digits", 1)
    budget.reserve("langid", 2)
    budget.reserve("minilm", 90)
    budget.reserve("iris", 1)
    # 266 more need 60 freed: LRU picks digits, langid, minilm; only minilm is needed.
    assert budget.victims(266, evictable=anything) == ["minilm"]


def test_victims_keep_every_pick_that_is_needed() -> None:
    budget: ByteBudget[str] = ByteBudget(100)
    for key, size in (("a", 10), ("b", 30), ("c", 40)):
        budget.reserve(key, size)
    # 60 more need 40 freed: a+b (40) is the LRU prefix and exactly enough; both stay picked.
    assert budget.victims(60, evictable=anything) == ["a", "b"]
    # 80 more need 60: a, b, c are picked (80); without a, b + c (70) still make room.
    assert budget.victims(80, evictable=anything) == ["b", "c"]


def test_lru_order_follows_uses() -> None:
    budget: ByteBudget[str] = ByteBudget(90)
    for key in "abc":
        budget.reserve(key, 30)
    budget.touch("a")
    assert budget.keys_lru_first() == ["b", "c", "a"]
    assert budget.victims(30, evictable=anything) == ["b"]
    prio = {k: budget.priority(k) for k in "abc"}
    assert all(p is not None and p <= 0 for p in prio.values())
    assert budget.priority("z") is None


def cost_budget(seconds: dict[str, float], limit: int = 100 * MIB) -> ByteBudget[str]:
    return ByteBudget(limit, "cost", seconds.__getitem__)


def test_cost_keeps_a_frequently_used_expensive_model_over_a_rarely_used_cheap_one() -> None:
    """The victim is the one whose eviction costs least to undo per byte freed."""
    seconds = {"dear": 2.0, "cheap": 0.05, "new": 0.5}
    budget = cost_budget(seconds)
    budget.reserve("dear", 40 * MIB)
    budget.reserve("cheap", 40 * MIB)
    for _ in range(5):
        budget.touch("dear")
    budget.touch("cheap")
    # LRU would evict "dear" (least recently used); cost evicts "cheap".
    assert budget.keys_lru_first()[0] == "cheap"
    assert budget.victims(40 * MIB, evictable=anything) == ["cheap"]


def test_cost_prefers_evicting_the_bigger_of_equally_cheap_models() -> None:
    seconds = {"small": 1.0, "big": 1.0}
    budget = cost_budget(seconds)
    budget.reserve("small", 10 * MIB)
    budget.reserve("big", 80 * MIB)
    assert budget.victims(50 * MIB, evictable=anything) == ["big"]


def test_cost_clock_ages_out_a_model_no_longer_used() -> None:
    """Evictions raise the clock, so new uses outrank an old model's past frequency."""
    seconds = {"old": 1.0, "a": 1.0, "b": 1.0}
    order: CostOrder[str] = CostOrder(seconds.__getitem__)
    order["old"] = 10 * MIB
    for _ in range(3):
        order.use("old")
    old = order.priority("old")
    order["a"] = 10 * MIB
    order.use("a")
    assert order.priority("a") < old
    for _ in range(4):  # each eviction of a fresh model raises the clock
        order.evicted("a")
        del order["a"]
        order["a"] = 10 * MIB
        order.use("a")
        order.evicted("a")
    assert order.clock > 0
    order["b"] = 10 * MIB
    order.use("b")
    assert order.priority("b") > old  # b, used now once, outranks old's stale three uses


def test_cost_skips_models_that_are_not_evictable() -> None:
    seconds = {"a": 0.1, "b": 5.0}
    budget = cost_budget(seconds)
    budget.reserve("a", 50 * MIB)
    budget.reserve("b", 50 * MIB)
    assert budget.victims(10 * MIB, evictable=anything) == ["a"]
    assert budget.victims(10 * MIB, evictable=lambda k: k != "a") == ["b"]
    assert budget.victims(10 * MIB, evictable=lambda k: False) is None


@pytest.mark.parametrize(
    ("policy", "rank", "text"),
    [
        ("lru", 1, "LRU, oldest of 3 idle"),
        ("lru", 2, "LRU, 2nd oldest of 3 idle"),
        ("cost", 1, "cost priority 0.123, lowest of 3 idle"),
        ("cost", 3, "cost priority 0.123, 3rd lowest of 3 idle"),
    ],
)
def test_describe_says_why_the_victim(policy: str, rank: int, text: str) -> None:
    assert describe(policy, 0.1234, rank, 3) == text  # type: ignore[arg-type]


def test_a_model_with_waiting_requests_is_not_evictable() -> None:
    """A request waiting for a model protects it like a lease."""
    from registry.config.schema import ModelSpec
    from registry.slot import Slot, State

    slot = Slot(name="m", spec=ModelSpec(loader="fake"), source=None, state=State.LOADED)
    assert slot.evictable
    slot.add_waiter()
    assert not slot.evictable
    slot.remove_waiter()
    slot.lease()
    assert (slot.waiting, slot.leases) == (0, 1)
    assert not slot.evictable
