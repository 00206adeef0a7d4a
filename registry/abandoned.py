"""Threads the registry stopped waiting for, and the bytes they still hold.

A load past `load_timeout`, the load of a model removed from models.yaml, or a predict call
past `predict_timeout` cannot be stopped from outside when it runs in a thread: Python has
no way to kill a thread. The registry stops waiting, records the thread here, and keeps the
model's bytes reserved until the thread really ends (that memory is real), and starts no new
load of that model until then. A model that can be stopped (an `abort()` method) is asked to
stop. A load or a call in a worker process can be stopped: its worker is killed, and its
record here lasts only until the worker is reaped (milliseconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from registry.slot import Slot


@dataclass(eq=False)
class AbandonedThread:
    """One thread that outlived the wait for it."""

    slot: Slot
    kind: str  # "load", "restore" (a copy back from host memory) or "inference"
    why: str
    since: float = field(default_factory=time.time)


class Abandoned:
    """The set of abandoned threads; each slot counts its own in `slot.abandoned`."""

    def __init__(self) -> None:
        self._records: set[AbandonedThread] = set()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, slot: Slot, kind: str, why: str) -> AbandonedThread:
        """Record a thread the registry no longer waits for."""
        record = AbandonedThread(slot, kind, why)
        self._records.add(record)
        slot.thread_abandoned()
        return record

    def ended(self, record: AbandonedThread) -> bool:
        """The thread is gone; True if its slot has no other abandoned thread."""
        if record not in self._records:
            return False
        self._records.discard(record)
        return record.slot.thread_ended()

    def __iter__(self) -> Iterator[AbandonedThread]:
        """Every abandoned thread, oldest first."""
        return iter(sorted(self._records, key=lambda r: r.since))
