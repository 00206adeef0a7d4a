"""A predict call past `predict_timeout`: the request gets 504, the model is marked failed.

The timeout counts from when the call started on the model's thread. A request whose call
has not started when predict_timeout has passed since it was queued is answered then, 503
`busy` (`late`), and its call never runs: it does not wait for the calls ahead of it.

Python cannot stop a thread, so the stuck call is left to finish on its own (a model with
an `abort()` method is asked to stop it). Until it does, the model's bytes stay reserved,
calls queued behind it get 503 instead of waiting, and no new load of the model starts.
Once it ends, the model is closed, its bytes are released, and the next request after the
backoff loads it again.

`StuckCalls` is owned by the lifecycle (registry/lifecycle.py: `mark_stuck`, `stuck_error`,
`late_error`); it changes the slot through its own methods and the memory state only
through the room's `Holdings` (registry/memory/holdings.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from registry.errors import BusyQueueFull, InferenceTimeout, ModelFailed
from registry.failures import Failures
from registry.memory.making_room import Room
from registry.model_calls import dispose
from registry.slot import Slot
from registry.threads import ModelThread, run_in_thread

if TYPE_CHECKING:
    from registry.abandoned import AbandonedThread
    from registry.loaders import Model

log = logging.getLogger("registry")


class StuckCalls:
    """Marks models whose calls got stuck as failed, and cleans up once the calls end."""

    def __init__(self, room: Room, failures: Failures) -> None:
        self._room = room
        self._failures = failures

    def stuck(
        self,
        slot: Slot,
        model: Model,
        thread: ModelThread | None,
        timeout: float,
        call: concurrent.futures.Future[Any],
    ) -> BaseException:
        """The call on `model` ran past `timeout`: mark the model failed; the request's error."""
        if thread is not None and thread.broken is None:
            self._mark_failed(slot, model, thread, timeout, call)
        return InferenceTimeout(slot.name, timeout)

    def _mark_failed(
        self,
        slot: Slot,
        model: Model,
        thread: ModelThread,
        timeout: float,
        call: concurrent.futures.Future[Any],
    ) -> None:
        room = self._room
        why = f"predict timed out after {timeout:g}s (predict_timeout)"
        thread.mark_broken(functools.partial(self.error, slot))
        if slot.model is model:
            if slot.batcher is not None:
                slot.batcher.fail_queued(lambda: self.error(slot))
            slot.drop_model()
            backoff = room.settings.retry_backoff
            self._failures.failed(slot, InferenceTimeout(slot.name, timeout), timeout, backoff)
        record = room.holdings.abandon(slot, "inference", why)
        abort = getattr(model, "abort", None)
        if callable(abort):
            job = run_in_thread(abort, name=f"abort-{slot.name}")
            job.add_done_callback(functools.partial(_log_abort, slot.name))
        loop = asyncio.get_running_loop()

        def ended(_: object) -> None:  # in the model's thread, when the stuck call returns
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process ends
                loop.call_soon_threadsafe(self._call_ended, record, model, thread)

        call.add_done_callback(ended)
        room.notify()

    def error(self, slot: Slot) -> ModelFailed:
        """What requests for a model with a stuck call get (503, retry after the backoff)."""
        retry_after = max(1.0, slot.retry_at - time.monotonic())
        return ModelFailed(
            slot.name, slot.error or "a call got stuck", retry_after=retry_after, what="is failed"
        )

    def late(self, slot: Slot, timeout: float) -> BusyQueueFull:
        """What a request gets whose call had not started `timeout` seconds after it queued."""
        ahead = max(0, slot.leases - 1)  # the leases include this request's own
        return BusyQueueFull(
            f"model {slot.name!r} is busy: this request waited {timeout:g}s (predict_timeout) "
            f"behind {ahead} other request(s) without starting; retry later",
            retry_after=self._room.busy_eta(slot),
        )

    def _call_ended(self, record: AbandonedThread, model: Model, thread: ModelThread) -> None:
        self._room.spawn(self._bury(record, model, thread), name=f"bury {record.slot.name}")

    async def _bury(self, record: AbandonedThread, model: Model, thread: ModelThread) -> None:
        try:
            await run_in_thread(functools.partial(dispose, (model, None)), name="dispose")
        except Exception:
            log.exception("error while closing %s after its stuck call", record.slot.name)
        finally:
            holdings = self._room.holdings
            holdings.retire_thread(thread)
            holdings.reclaim(record)
            self._room.notify()


def _log_abort(name: str, job: asyncio.Future[Any]) -> None:
    if not job.cancelled() and job.exception() is not None:
        log.error("abort() of %s raised %r", name, job.exception())
