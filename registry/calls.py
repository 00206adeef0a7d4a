"""The model calls: a predict on the model's thread under its predict_timeout, and the
batcher that groups concurrent requests into one call (registry/batching.py).

Owned by the lifecycle (registry/lifecycle.py); a call past its timeout is handed to the
stuck calls (registry/stuck_calls.py), which mark the model failed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import Any

from registry.batching import Batcher
from registry.loaders import Model
from registry.memory.making_room import Room
from registry.model_calls import predict_json
from registry.slot import Slot
from registry.stats import Timing
from registry.stuck_calls import StuckCalls
from registry.threads import InferencePool, ModelThread


class Calls:
    """Runs predict calls and builds batchers (see the module docstring)."""

    def __init__(self, room: Room, pool: InferencePool, stuck: StuckCalls) -> None:
        self._room = room
        self._pool = pool
        self._stuck = stuck

    @property
    def stuck(self) -> StuckCalls:
        """What happens to calls past their predict_timeout."""
        return self._stuck

    def predict_timeout(self, slot: Slot) -> float:
        """The model's predict_timeout, else the server's."""
        return slot.spec.predict_timeout or self._room.settings.predict_timeout

    def refresh_batcher(self, slot: Slot) -> None:
        """(Re)build the batcher from the entry's `batch:` (queued requests keep theirs)."""
        batch = slot.spec.batch
        if batch is None or slot.model is None:
            slot.use_batcher(None)
            return
        batcher = Batcher(
            functools.partial(self.run_predict, slot, slot.model, slot.thread),
            max_size=batch.max_size,
            max_wait=batch.max_wait_ms / 1000,
        )
        slot.use_batcher(batcher)

    def run_predict(
        self,
        slot: Slot,
        model: Model,
        thread: ModelThread | None,
        inputs: list[Any],
        parameters: Mapping[str, Any],
        *,
        timing: Timing | None = None,
    ) -> asyncio.Task[list[Any]]:
        """One predict call on the model's thread, bounded by its predict_timeout."""
        timeout = self.predict_timeout(slot)
        call = (predict_json,) if timing is None else (timing.run, predict_json)
        job = self._pool.submit(
            *call,
            model,
            inputs,
            dict(parameters),
            thread=thread,
            timeout=timeout,
            on_stuck=functools.partial(self._stuck.stuck, slot, model, thread, timeout),
        )
        # A request cut off by the end of the drain (answered 503) no longer reads its call's
        # outcome (a worker ended under it raises WorkerDied): it is read here, not logged.
        job.add_done_callback(_outcome_read)
        return job


def _outcome_read(job: asyncio.Future[Any]) -> None:
    if not job.cancelled():
        job.exception()
