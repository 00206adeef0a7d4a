"""The memory budget: bytes held per model, in least-recently-used order.

A `cachetools.LRUCache` sized by bytes keeps the order and the total. The budget never evicts
on its own: `victims()` asks which idle models an insert would push out, by letting
`LRUCache.popitem()` pick them on a copy, and the manager unloads them before it reserves.
So the tracked total only counts memory that is really held or promised, and never exceeds
the limit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Hashable
from typing import Generic, TypeVar

from cachetools import Cache, LRUCache

K = TypeVar("K", bound=Hashable)


def _nbytes(value: int) -> int:
    return value


class ByteBudget(Generic[K]):
    """Bytes reserved per key under `limit`; `touch()` marks a key as just used."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a memory budget must be positive")
        self.limit = limit
        # The cache never evicts by itself (unbounded); the limit is enforced by reserve().
        self._lru: LRUCache[K, int] = LRUCache(maxsize=math.inf, getsizeof=_nbytes)

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

    def release(self, key: K) -> int:
        """Forget `key`; returns the bytes it held."""
        return self._lru.pop(key, 0)

    def touch(self, key: K) -> None:
        """Mark `key` as the most recently used."""
        if key in self._lru:
            self._lru[key]  # an LRUCache lookup moves the key to the recent end

    def keys_lru_first(self) -> list[K]:
        """Every key, least recently used first."""
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
        """The least recently used evictable keys whose release makes `nbytes` fit.

        `freeing` are keys already being released (their bytes count as free soon).
        Returns [] when nothing must be evicted, None when even evicting every evictable
        key would not make room.
        """
        held = self.size_of(replacing) if replacing is not None else 0
        soon_free = sum(self.size_of(k) for k in freeing if k in self._lru)
        need = self.used - held - soon_free + nbytes - self.limit
        if need <= 0:
            return []
        trial = copy.copy(self._lru)
        chosen: list[K] = []
        while need > 0:
            try:
                key, size = trial.popitem()  # least recently used first
            except KeyError:
                return None
            if key != replacing and key not in freeing and evictable(key):
                chosen.append(key)
                need -= size
        return chosen

    def set_limit(self, limit: int) -> None:
        """Change the limit; a lower one may leave `used` above it until models are evicted."""
        if limit <= 0:
            raise ValueError("a memory budget must be positive")
        self.limit = limit
