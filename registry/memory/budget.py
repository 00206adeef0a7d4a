"""The memory budget: bytes held per model, in the eviction policy's order.

A cachetools cache sized by bytes (registry/memory/policy.py: LRU, or cost-aware) keeps the order
and the total. The budget never evicts on its own: `victims()` asks which idle models an
insert would push out, by letting the cache's `popitem()` pick them on a copy, then gives
back every pick the room does not need; the manager unloads them before it reserves. So the
tracked total only counts memory that is really held or promised, and a reservation never
exceeds the limit; only a worker's measured growth (`follow`) may, until room is made.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Hashable
from typing import Generic, TypeVar

from cachetools import Cache

from registry.memory.policy import Order, Policy, new_order

K = TypeVar("K", bound=Hashable)


def _one_second(key: object) -> float:
    return 1.0


class ByteBudget(Generic[K]):
    """Bytes reserved per key under `limit`; `touch()` marks a key as just used."""

    def __init__(
        self,
        limit: int,
        policy: Policy = "lru",
        reload_seconds: Callable[[K], float] = _one_second,
    ) -> None:
        if limit <= 0:
            raise ValueError("a memory budget must be positive")
        self.limit = limit
        self.policy: Policy = policy
        # The cache never evicts by itself (unbounded); the limit is enforced by reserve().
        self._lru: Order[K] = new_order(policy, reload_seconds)

    @property
    def used(self) -> int:
        """Bytes reserved or held now."""
        return int(self._lru.currsize)

    @property
    def free(self) -> int:
        """Bytes that can be reserved without evicting anything."""
        return max(0, self.limit - self.used)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    def size_of(self, key: K) -> int:
        """Bytes held by `key` (0 when absent); looking does not count as a use."""
        if key not in self._lru:
            return 0
        return int(Cache.__getitem__(self._lru, key))  # LRUCache's own lookup reorders

    def fits(self, nbytes: int, *, replacing: K | None = None) -> bool:
        """Whether `nbytes` more (or instead of what `replacing` holds) fit under the limit."""
        held = self.size_of(replacing) if replacing is not None else 0
        return self.used - held + nbytes <= self.limit

    def reserve(self, key: K, nbytes: int) -> None:
        """Hold `nbytes` for `key` (replacing what it held); the caller made room first."""
        if nbytes > self.limit:
            raise ValueError("value too large")
        if not self.fits(nbytes, replacing=key):
            raise ValueError(f"reserving {nbytes} bytes would exceed the budget of {self.limit}")
        self._lru[key] = nbytes

    def follow(self, key: K, nbytes: int) -> None:
        """Hold what `key` was measured to hold, even past the limit: a worker's memory
        grew, and the total tells the truth while the caller makes room (or recycles it)."""
        self._lru[key] = nbytes

    def release(self, key: K) -> int:
        """Forget `key`; returns the bytes it held."""
        return self._lru.pop(key, 0)

    def touch(self, key: K) -> None:
        """Record a use of `key` (LRU: most recent now; cost: one more use)."""
        if key in self._lru:
            self._lru.use(key)

    def priority(self, key: K) -> float | None:
        """The key's eviction priority (lower goes first); None when it holds nothing."""
        return self._lru.priority(key) if key in self._lru else None

    def evicted(self, key: K) -> None:
        """`key` is being evicted by the policy (the cost policy's clock rises to it)."""
        if key in self._lru:
            self._lru.evicted(key)

    def keys_lru_first(self) -> list[K]:
        """Every key, in the policy's eviction order (LRU: least recently used first)."""
        trial = copy.copy(self._lru)
        order: list[K] = []
        while trial:
            key, _ = trial.popitem()
            order.append(key)
        return order

    def victims(
        self,
        nbytes: int,
        *,
        evictable: Callable[[K], bool],
        freeing: Collection[K] = (),
        replacing: K | None = None,
    ) -> list[K] | None:
        """The evictable keys, in policy order, whose release makes `nbytes` fit.

        Picks in the policy's order until the room is made, then gives back every pick the
        room does not need, the last (most valuable) first, so a big model's load does not
        also throw out small ones for nothing. `freeing` are keys already being released
        (their bytes count as free soon). Returns [] when nothing must be evicted, None
        when even evicting every evictable key would not make room.
        """
        held = self.size_of(replacing) if replacing is not None else 0
        soon_free = sum(self.size_of(k) for k in freeing if k in self._lru)
        need = self.used - held - soon_free + nbytes - self.limit
        if need <= 0:
            return []
        trial = copy.copy(self._lru)
        chosen: list[tuple[K, int]] = []
        while need > 0:
            try:
                key, size = trial.popitem()  # least recently used first
            except KeyError:
                return None
            if key != replacing and key not in freeing and evictable(key):
                chosen.append((key, size))
                need -= size
        for pick in reversed(list(chosen)):
            if need + pick[1] <= 0:  # the room is made without this one
                chosen.remove(pick)
                need += pick[1]
        return [key for key, _ in chosen]

    def set_limit(self, limit: int) -> None:
        """Change the limit; a lower one may leave `used` above it until models are evicted."""
        if limit <= 0:
            raise ValueError("a memory budget must be positive")
        self.limit = limit
