"""The event stream: every state change of a model, in order, with an id per event.

Logs, metrics, `GET /events` and the dashboard are views of this one stream.

- `EventBus.emit()` numbers events 1, 2, 3, ... and keeps the last `history` in a ring, so a
  client that reconnects with the last id it saw gets what it missed (`subscribe(after=id)`).
- Each subscriber has a bounded queue. A subscriber that falls behind loses the oldest
  events and gets one `gap` event saying how many it missed (then it should re-read
  `GET /models`); the emitter never waits for anyone.
- `close()` ends every subscription (shutdown), so open streams do not hold up the drain.

Everything runs on the event loop's thread; `emit()` is cheap (no I/O).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

# Every event is also a log record here, with its fields as attributes: the JSON log format
# (`serve --log-format json`) prints them; the text format leaves this logger quiet, since
# the registry's own lines already say the same for people.
event_log = logging.getLogger("registry.events")


class UnloadReason(enum.StrEnum):
    """Why a loaded model was unloaded."""

    LRU = "lru"  # evicted, least recently used first, to make room for another model
    COST = "cost"  # evicted by a cost-aware policy to make room for another model
    TTL = "ttl"  # idle past its idle_ttl
    ADMIN = "admin"  # POST /models/{name}/unload
    RELOAD = "reload"  # removed from, or replaced in, models.yaml
    BUDGET = "budget"  # the memory budget was lowered below what is held
    SHUTDOWN = "shutdown"
    RECYCLE = "recycle"  # a process model's worker outgrew its reservation: a fresh one loads
    WORKER_DIED = "worker_died"  # a process model's worker died while idle (next request reloads)

    @property
    def eviction(self) -> bool:
        """Whether the registry chose to drop it for memory (not a person or the config)."""
        return self in (UnloadReason.LRU, UnloadReason.COST, UnloadReason.BUDGET)


class EventKind(enum.StrEnum):
    """What happened."""

    LOADING = "loading"
    LOADED = "loaded"
    EVICTED = "evicted"  # unloaded by the registry for memory (lru, cost, budget)
    UNLOADED = "unloaded"  # unloaded for any other reason (ttl, admin, reload, shutdown)
    FAILED = "failed"
    OFFLOADED = "offloaded"  # evicted from a GPU, kept in host memory (the host-RAM tier)
    RESTORED = "restored"  # copied back from host memory to a GPU
    CONFIG_APPLIED = "config_applied"
    CONFIG_REFUSED = "config_refused"
    GAP = "gap"  # only in a subscription: events were dropped or are no longer kept


@dataclass(frozen=True)
class Event:
    """One state change; `data` holds the kind's fields (bytes, seconds, reason, error)."""

    id: int
    kind: EventKind
    model: str | None
    time: float  # wall clock, seconds since the epoch
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape sent on /events."""
        return {
            "id": self.id,
            "type": self.kind.value,
            "model": self.model,
            "time": round(self.time, 3),
            **self.data,
        }


class Subscription:
    """One reader of the stream: a bounded queue that drops its oldest events when full."""

    def __init__(self, bus: EventBus, limit: int) -> None:
        self._bus = bus
        self._queue: deque[Event] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self._missed = 0
        self.closed = False

    def _put(self, event: Event) -> None:
        if len(self._queue) >= self._limit:
            self._queue.popleft()
            self._missed += 1
        self._queue.append(event)
        self._wake.set()

    def _miss(self, count: int) -> None:
        self._missed += count
        self._wake.set()

    def _close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self, within: float | None = None) -> Event | None:
        """The next event (a `gap` first if some were lost); None on timeout or when closed."""
        if not self._queue and not self._missed and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), within)
            except TimeoutError:
                return None
        if self._missed:
            missed, self._missed = self._missed, 0
            next_id = self._queue[0].id if self._queue else self._bus.last_id + 1
            return Event(next_id - 1, EventKind.GAP, None, time.time(), {"missed": missed})
        if self._queue:
            return self._queue.popleft()
        return None  # closed

    def close(self) -> None:
        """Stop receiving events."""
        self._bus.unsubscribe(self)


class EventBus:
    """Numbers, keeps and fans out events."""

    def __init__(self, *, history: int = 1000, queue: int = 256) -> None:
        self._ring: deque[Event] = deque(maxlen=history)
        self._queue_limit = queue
        self._subscribers: set[Subscription] = set()
        self._next_id = 1
        self.closed = False

    @property
    def last_id(self) -> int:
        """The id of the latest event (0 before the first)."""
        return self._next_id - 1

    def emit(self, kind: EventKind, model: str | None = None, /, **data: Any) -> Event:
        """Record one event and hand it to every subscriber (never waits)."""
        event = Event(self._next_id, kind, model, time.time(), data)
        self._next_id += 1
        self._ring.append(event)
        if event_log.isEnabledFor(logging.INFO):
            fields = {"event": kind.value, "model": model, "event_id": event.id, **data}
            event_log.info("%s %s", kind.value, model or "", extra=fields)
        for subscriber in self._subscribers:
            subscriber._put(event)
        return event

    def recent(self, limit: int = 100) -> list[Event]:
        """The latest `limit` events, oldest first."""
        return list(self._ring)[-limit:] if limit > 0 else []

    def subscribe(self, after: int | None = None) -> Subscription:
        """A new reader; with `after`, the kept events after that id are replayed first."""
        subscription = Subscription(self, self._queue_limit)
        if after is not None and after > self.last_id:
            after = 0  # an id from before a restart: everything kept here is new to it
        if after is not None and after < self.last_id:
            kept = [e for e in self._ring if e.id > after]
            oldest = kept[0].id if kept else self._next_id
            if oldest > after + 1:  # some are no longer kept
                subscription._miss(oldest - after - 1)
            for event in kept:
                subscription._put(event)
        if self.closed:
            subscription._close()
        else:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget one reader."""
        self._subscribers.discard(subscription)
        subscription._close()

    @property
    def subscribers(self) -> int:
        """How many readers are attached."""
        return len(self._subscribers)

    def close(self) -> None:
        """End every subscription (shutdown); later subscriptions end at once."""
        self.closed = True
        for subscription in list(self._subscribers):
            self.unsubscribe(subscription)
