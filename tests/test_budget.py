"""ByteBudget: bytes per key under a limit, least recently used first, never evicting by itself."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support import anything

from registry.memory.budget import ByteBudget


def budget_abc(limit: int = 100) -> ByteBudget[str]:
    """a, b and c hold 30 bytes each, reserved in that order (a is least recently used)."""
    budget: ByteBudget[str] = ByteBudget(limit)
    for key in "abc":
        budget.reserve(key, 30)
    return budget


def test_reserve_and_release_track_used_and_free() -> None:
    budget: ByteBudget[str] = ByteBudget(100)
    assert (budget.used, budget.free, len(budget)) == (0, 100, 0)
    budget.reserve("a", 30)
    budget.reserve("b", 50)
    assert (budget.used, budget.free, len(budget)) == (80, 20, 2)
    assert "a" in budget and "z" not in budget
    assert budget.size_of("b") == 50
    assert budget.size_of("z") == 0
    assert budget.release("a") == 30
    assert (budget.used, budget.free) == (50, 50)
    assert "a" not in budget
    assert budget.release("a") == 0
    assert budget.used == 50


def test_reserve_again_replaces_what_the_key_held() -> None:
    budget: ByteBudget[str] = ByteBudget(100)
    budget.reserve("a", 60)
    budget.reserve("a", 90)  # an estimate replaced by a larger measurement
    assert (budget.used, len(budget)) == (90, 1)
    budget.reserve("a", 10)
    assert budget.used == 10


def test_reserve_up_to_the_limit_exactly() -> None:
    budget: ByteBudget[str] = ByteBudget(100)
    budget.reserve("a", 40)
    budget.reserve("b", 60)
    assert (budget.used, budget.free) == (100, 0)


def test_a_value_larger_than_the_limit_is_too_large() -> None:
    budget: ByteBudget[str] = ByteBudget(100)
    with pytest.raises(ValueError) as info:
        budget.reserve("a", 101)
    assert str(info.value) == "value too large"
    assert (budget.used, len(budget)) == (0, 0)


def test_reserving_past_the_limit_with_others_held_is_refused() -> None:
    budget: ByteBudget[str] = ByteBudget(100)
    budget.reserve("a", 60)
    with pytest.raises(ValueError) as info:
        budget.reserve("b", 50)
    assert str(info.value) == "reserving 50 bytes would exceed the budget of 100"
    assert (budget.used, "b" in budget) == (60, False)


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError) as info:
        ByteBudget(limit)
    assert str(info.value) == "a memory budget must be positive"
    budget: ByteBudget[str] = ByteBudget(10)
    with pytest.raises(ValueError):
        budget.set_limit(limit)
    assert budget.limit == 10


def test_fits() -> None:
    budget = budget_abc()
    assert budget.fits(10)
    assert not budget.fits(11)
    assert budget.fits(40, replacing="a")
    assert not budget.fits(41, replacing="a")
    assert budget.fits(10, replacing="not-held")


def test_keys_lru_first_and_touch() -> None:
    budget = budget_abc()
    assert budget.keys_lru_first() == ["a", "b", "c"]
    budget.touch("a")
    assert budget.keys_lru_first() == ["b", "c", "a"]
    budget.touch("missing")  # no effect, no error
    assert budget.keys_lru_first() == ["b", "c", "a"]
    assert "missing" not in budget


def test_reserve_marks_the_key_as_recent() -> None:
    budget = budget_abc()
    budget.reserve("a", 35)
    assert budget.keys_lru_first() == ["b", "c", "a"]


def test_victims_is_empty_when_it_fits() -> None:
    budget = budget_abc()
    assert budget.victims(10, evictable=anything) == []


@pytest.mark.parametrize(
    ("nbytes", "victims"),
    [(11, ["a"]), (40, ["a"]), (41, ["a", "b"]), (70, ["a", "b"]), (100, ["a", "b", "c"])],
)
def test_victims_in_lru_order(nbytes: int, victims: list[str]) -> None:
    assert budget_abc().victims(nbytes, evictable=anything) == victims


def test_victims_follow_touch() -> None:
    budget = budget_abc()
    budget.touch("a")
    assert budget.victims(40, evictable=anything) == ["b"]
    assert budget.victims(70, evictable=anything) == ["b", "c"]


def test_victims_skip_keys_that_are_not_evictable() -> None:
    budget = budget_abc()
    in_use = {"a"}
    assert budget.victims(40, evictable=lambda k: k not in in_use) == ["b"]
    assert budget.victims(70, evictable=lambda k: k not in in_use) == ["b", "c"]


def test_victims_is_none_when_evicting_everything_evictable_is_not_enough() -> None:
    budget = budget_abc()
    assert budget.victims(41, evictable=lambda k: k == "a") is None
    assert budget.victims(101, evictable=anything) is None


def test_victims_does_not_change_the_budget() -> None:
    budget = budget_abc()
    assert budget.victims(100, evictable=anything) == ["a", "b", "c"]
    assert budget.keys_lru_first() == ["a", "b", "c"]
    assert (budget.used, len(budget)) == (90, 3)


@pytest.mark.parametrize(
    ("nbytes", "freeing", "victims"),
    [
        (40, {"a"}, []),
        (50, {"a"}, ["b"]),
        (70, {"a", "b"}, []),
        (100, {"b"}, ["a", "c"]),
        (100, {"a"}, ["b", "c"]),
        (50, {"not-held"}, ["a", "b"]),
    ],
)
def test_freeing_keys_count_as_free_soon_and_are_never_victims(
    nbytes: int, freeing: set[str], victims: list[str]
) -> None:
    assert budget_abc().victims(nbytes, evictable=anything, freeing=freeing) == victims


@pytest.mark.parametrize(
    ("nbytes", "evictable", "victims"),
    [
        (40, anything, []),
        (60, anything, ["a"]),
        (91, anything, ["a", "c"]),
        (101, anything, None),
        # b is never its own victim, even when it is the least recently used
        (60, lambda k: k != "a", ["c"]),
    ],
)
def test_replacing_counts_the_key_own_bytes(
    nbytes: int, evictable: Callable[[str], bool], victims: list[str] | None
) -> None:
    budget = budget_abc()
    assert budget.victims(nbytes, evictable=evictable, replacing="b") == victims


@pytest.mark.parametrize(
    "query",
    [
        lambda b: b.size_of("a"),
        lambda b: b.fits(10, replacing="a"),
        lambda b: b.victims(10, evictable=anything, freeing={"a"}),
        lambda b: b.victims(10, evictable=anything, replacing="a"),
    ],
    ids=["size_of", "fits", "victims-freeing", "victims-replacing"],
)
def test_queries_do_not_change_the_lru_order(query: Callable[[ByteBudget[str]], object]) -> None:
    budget = budget_abc()
    query(budget)
    assert budget.keys_lru_first() == ["a", "b", "c"]


def test_set_limit_lower_leaves_used_above_and_victims_ask_to_evict() -> None:
    budget = budget_abc()
    budget.set_limit(50)
    assert (budget.limit, budget.used, budget.free) == (50, 90, 0)
    assert budget.victims(0, evictable=anything) == ["a", "b"]
    assert budget.victims(0, evictable=lambda k: k == "c") is None
    with pytest.raises(ValueError):
        budget.reserve("d", 1)


def test_set_limit_higher_makes_room() -> None:
    budget = budget_abc()
    budget.set_limit(200)
    assert budget.free == 110
    assert budget.victims(110, evictable=anything) == []
    budget.reserve("d", 110)
    assert budget.used == 200
