"""A model that failed: the failed state, its backoff, its log line, its count and event."""

from __future__ import annotations

import logging
from typing import Any

from registry.config.schema import BackoffSpec
from registry.errors import CapacityExceeded, InferenceTimeout, ModelTooLarge
from registry.events import EventBus, EventKind
from registry.slot import Slot
from registry.stats import Stats
from registry.units import format_duration

log = logging.getLogger("registry")


class Failures:
    """Marks models failed (one per lifecycle; the stuck calls use it too)."""

    def __init__(self, events: EventBus, stats: Stats) -> None:
        self._events = events
        self._stats = stats

    def failed(self, slot: Slot, exc: BaseException, timeout: float, backoff: BackoffSpec) -> None:
        """Mark the model failed after `exc`; the next load waits for the backoff."""
        if isinstance(exc, TimeoutError):
            error = f"load timed out after {timeout:g}s (load_timeout)"
        elif isinstance(exc, (ModelTooLarge, CapacityExceeded)):
            error = exc.message
        elif isinstance(exc, InferenceTimeout):
            error = f"predict timed out after {exc.seconds:g}s (predict_timeout)"
        else:
            error = f"{type(exc).__name__}: {exc}"
        delay = slot.fail(error, backoff, exc)
        log.error(
            "%s %s: %s (attempt %d, next try in %s)",
            "marked failed" if isinstance(exc, InferenceTimeout) else "failed to load",
            slot.name,
            slot.error,
            slot.failures,
            format_duration(delay),
        )
        self.record(slot, error, retry_in=delay)

    def record(self, slot: Slot, error: str, **data: Any) -> None:
        """Count and announce a failure."""
        self._stats.of(slot.name).record_failure()
        self._events.emit(EventKind.FAILED, slot.name, error=error, **data)
