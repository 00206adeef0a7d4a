"""Eviction policies: the order in which idle models give their bytes back.

Both are cachetools caches sized by bytes that never evict on their own (the budget decides
when); `popitem()` names the next victim, so `ByteBudget` asks a policy by popping a copy.

- `lru`: the least recently used model first (`cachetools.LRUCache`).
- `cost`: GreedyDual-Size-Frequency. A model's priority is
  `clock + uses x reload_seconds / MiB`: what evicting it costs to undo, per byte it frees,
  weighted by how often it is used. The lowest priority goes first, and the clock rises to
  each evicted priority, so a model that stops being used ages out behind ones in use. Use
  counts outlive an eviction (a model evicted and loaded again keeps its history) and are
  halved every `AGE_EVERY` uses, so a popularity shift wins within a few hundred requests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from typing import Literal, TypeVar

from cachetools import Cache, LRUCache

K = TypeVar("K", bound=Hashable)
Policy = Literal["lru", "cost"]
MIB = 1024 * 1024
AGE_EVERY = 256  # uses between halvings of every use count


def _nbytes(value: int) -> int:
    return value


class LruOrder(LRUCache[K, int]):
    """Least recently used first; the priority is the time of the last use (monotonic)."""

    def __init__(self) -> None:
        super().__init__(maxsize=math.inf, getsizeof=_nbytes)
        self.used_at: dict[K, float] = {}

    def __setitem__(self, key: K, value: int) -> None:
        super().__setitem__(key, value)
        self.used_at[key] = time.monotonic()

    def __delitem__(self, key: K) -> None:
        super().__delitem__(key)
        self.used_at.pop(key, None)

    def __copy__(self) -> LruOrder[K]:
        copy: LruOrder[K] = super().__copy__()  # type: ignore[misc]
        copy.used_at = dict(self.used_at)
        return copy

    def use(self, key: K) -> None:
        """A request used `key`: it moves to the recent end."""
        LRUCache.__getitem__(self, key)
        self.used_at[key] = time.monotonic()

    def evicted(self, key: K) -> None:
        """`key` is being evicted (LRU keeps no state about it)."""

    def priority(self, key: K) -> float:
        """Minus the seconds since the last use: lower goes first."""
        return self.used_at.get(key, time.monotonic()) - time.monotonic()


class CostOrder(Cache[K, int]):
    """GreedyDual-Size-Frequency: the lowest `clock + uses x reload_seconds / MiB` first."""

    def __init__(self, reload_seconds: Callable[[K], float]) -> None:
        super().__init__(maxsize=math.inf, getsizeof=_nbytes)
        self.reload_seconds = reload_seconds
        self.clock = 0.0
        self.uses: dict[K, float] = {}  # kept after eviction, halved every AGE_EVERY uses
        self.priorities: dict[K, float] = {}
        self._since_aging = 0

    def __setitem__(self, key: K, value: int) -> None:
        super().__setitem__(key, value)
        self._rate(key)

    def __delitem__(self, key: K) -> None:
        super().__delitem__(key)
        self.priorities.pop(key, None)

    def __copy__(self) -> CostOrder[K]:
        copy: CostOrder[K] = super().__copy__()  # type: ignore[misc]
        copy.priorities = dict(self.priorities)
        return copy

    def popitem(self) -> tuple[K, int]:
        """The lowest priority goes (ties: the bigger model, which frees more)."""
        if not self.priorities:
            raise KeyError(f"{type(self).__name__} is empty")
        key = min(self.priorities, key=lambda k: (self.priorities[k], -Cache.__getitem__(self, k)))
        return key, self.pop(key)

    def use(self, key: K) -> None:
        """A request used `key`: one more use, re-rated at the current clock."""
        self.uses[key] = self.uses.get(key, 0.0) + 1.0
        self._since_aging += 1
        if self._since_aging >= AGE_EVERY:
            self._since_aging = 0
            self.uses = {k: n / 2 for k, n in self.uses.items() if n >= 0.5}
        self._rate(key)

    def evicted(self, key: K) -> None:
        """`key` is being evicted: the clock inflates to its priority."""
        self.clock = max(self.clock, self.priorities.get(key, self.clock))

    def priority(self, key: K) -> float:
        """The key's current priority (lower goes first)."""
        return self.priorities.get(key, self.clock)

    def _rate(self, key: K) -> None:
        if key not in self:
            return
        size_mib = max(Cache.__getitem__(self, key), 1) / MIB
        uses = max(self.uses.get(key, 0.0), 1.0)
        self.priorities[key] = self.clock + uses * self.reload_seconds(key) / size_mib


Order = LruOrder[K] | CostOrder[K]


def new_order(policy: Policy, reload_seconds: Callable[[K], float]) -> Order[K]:
    """The cache that keeps `policy`'s order."""
    if policy == "cost":
        return CostOrder(reload_seconds)
    return LruOrder()


def describe(policy: Policy, priority: float, rank: int, idle: int) -> str:
    """Why a victim was chosen, for the eviction's log line."""
    nth = "" if rank == 1 else f"{_ordinal(rank)} "
    if policy == "cost":
        return f"cost priority {priority:.3g}, {nth}lowest of {idle} idle"
    return f"LRU, {nth}oldest of {idle} idle"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
