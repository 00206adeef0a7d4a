"""Admission: a request's way in: check its input, wait for the model, lease it, predict.

- Single flight: requests for a cold model wait for its one load task; they do not own it,
  so a client that goes away cancels nothing.
- Leases: a request holds its model from before inference until the worker thread is done
  (not until the request is cancelled), so a model is never closed under a running call.
- Backpressure: past `max_queue` waiting requests a model answers 503 with Retry-After.
- A request that waits protects its model from eviction (`Slot.waiting`) from the moment it
  waits; a request whose caller went away (cancelled) is dropped from every queue unrun.
- Shutdown: requests admitted before it are served while the drain lasts; then they get 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from registry.errors import (
    BadInput,
    BusyQueueFull,
    CapacityExceeded,
    InferenceTimeout,
    LoadPending,
    LoadQueueFull,
    ModelFailed,
    ModelTooLarge,
    RegistryError,
    ShuttingDown,
    UnsupportedInput,
    WorkerDied,
)
from registry.fault import model_error
from registry.lifecycle import Lifecycle
from registry.payload import ImageRequest, PredictRequest, decode_image
from registry.roster import Roster
from registry.slot import Slot, State
from registry.stats import Timing
from registry.threads import InferencePool, ModelThread

if TYPE_CHECKING:
    from registry.batching import Batcher
    from registry.config.schema import ModelSpec

log = logging.getLogger("registry")


def check_input_kind(name: str, spec: ModelSpec, *, upload: bool, sent: str | None = None) -> None:
    """The one rule of what a model takes: an image model an image upload, any other JSON.

    UnsupportedInput (415) otherwise. `sent` is what an HTTP caller sent instead of the
    upload (its content type); the message then says how to send one.
    """
    kind = spec.input_kind
    what = spec.task or "custom loader"
    if upload and kind != "image":
        takes = "text" if kind == "text" else "JSON"
        raise UnsupportedInput(
            f"model {name!r} ({what}) takes {takes}: POST application/json "
            '{"inputs": ...}, not a file upload'
        )
    if not upload and kind == "image":
        if sent is None:
            raise UnsupportedInput(
                f"model {name!r} ({what}) takes an image: POST multipart/form-data "
                "with the image file in field 'file'"
            )
        raise UnsupportedInput(
            f"model {name!r} ({what}) takes an image: send multipart/form-data with the "
            f"file in field 'file' (e.g. curl -F file=@digit.png), not {sent}"
        )


class Admission:
    """Runs requests against the roster's slots (the manager's, updated by reloads)."""

    def __init__(self, roster: Roster, life: Lifecycle, pool: InferencePool) -> None:
        self._roster = roster
        self._life = life
        self._pool = pool

    async def predict(self, name: str, request: PredictRequest) -> Any:
        """Run one request on model `name`, loading it first if needed."""
        if self._life.closing:
            raise ShuttingDown()
        slot = self._roster.lookup(name)
        arrived = time.monotonic()
        timing = Timing()
        hit: bool | None = None  # stays None unless the request gets its model
        started = arrived
        outcome = "ok"
        try:
            inputs = await self._prepare(slot, request)
            loaded = slot.ready
            slot = await self._acquire(slot)
            started, hit = time.monotonic(), loaded
            return await self._run(slot, inputs, request, timing)
        except RegistryError as exc:
            outcome = exc.kind
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except BaseException:
            outcome = "internal"
            raise
        finally:
            done = time.monotonic() - started
            inference = min(done, timing.inference or 0.0)
            self._life.stats.request(
                name,
                outcome,
                load_wait=started - arrived,
                queue=done - inference,
                inference=inference,
                hit=hit,
            )

    async def hold(self, name: str) -> tuple[Slot, bool]:
        """A lease on model `name` (loaded first if needed) for a caller that makes its own
        calls on it: a generation stream; and whether it was loaded already (a hit).
        Give it back with `release(slot)`."""
        if self._life.closing:
            raise ShuttingDown()
        slot = self._roster.lookup(name)
        loaded = slot.ready
        return await self._acquire(slot), loaded

    def release(self, slot: Slot) -> None:
        """The end of a lease taken with `hold`."""
        self._release(slot)

    async def _run(
        self, slot: Slot, inputs: list[Any], request: PredictRequest, timing: Timing
    ) -> Any:
        started = time.monotonic()
        batcher, thread = slot.batcher, slot.thread
        try:
            future = self._infer(slot, inputs, request.parameters, timing)
        except BaseException:
            self._release(slot)
            raise
        future.add_done_callback(lambda done: self._release(slot, served=not done.cancelled()))
        answer = self._life.drain.answer(future)
        expiry = self._answer_if_late(slot, batcher, thread, future, answer)
        try:
            outputs = await answer
        except asyncio.CancelledError:
            self._withdraw(batcher, future)
            raise
        except (WorkerDied, InferenceTimeout) as exc:
            self._life.worker_lost(slot, exc)  # a process model's worker died or was killed
            raise
        except RegistryError:
            raise
        except Exception as exc:  # the input's fault (4xx) or the model's (5xx, logged)
            raise model_error(slot.name, exc, request.parameters) from exc
        finally:
            expiry.cancel()
        slot.stats.record_call(time.monotonic() - started)
        return outputs if request.is_batch else outputs[0]

    async def _prepare(self, slot: Slot, request: PredictRequest) -> list[Any]:
        """Check the input against the model's kind before anything loads."""
        check_input_kind(slot.name, slot.spec, upload=isinstance(request, ImageRequest))
        if isinstance(request, ImageRequest):
            return [await self._pool.submit(decode_image, request.data)]  # never on the loop
        kind = slot.spec.input_kind
        what = slot.spec.task or "custom loader"
        items = request.inputs if isinstance(request.inputs, list) else [request.inputs]
        if not items:
            raise BadInput("'inputs' is an empty list; send at least one input")
        limit = self._life.settings.max_inputs
        if len(items) > limit:
            raise BadInput(f"'inputs' has {len(items)} items; at most {limit} per request")
        if kind == "text" and not all(isinstance(item, str) for item in items):
            raise BadInput(
                f'model {slot.name!r} ({what}) takes text: "inputs" must be a string '
                "or a list of strings"
            )
        return list(items)

    def _infer(
        self, slot: Slot, inputs: list[Any], parameters: Mapping[str, Any], timing: Timing
    ) -> asyncio.Future[list[Any]]:
        if slot.batcher is not None:
            return slot.batcher.submit(inputs, parameters, timing=timing)
        assert slot.model is not None
        return self._life.run_predict(
            slot, slot.model, slot.thread, inputs, parameters, timing=timing
        )

    def _answer_if_late(
        self,
        slot: Slot,
        batcher: Batcher | None,
        thread: ModelThread | None,
        future: asyncio.Future[list[Any]],
        answer: asyncio.Future[list[Any]],
    ) -> asyncio.TimerHandle:
        """At predict_timeout after queueing, answer 503 busy if the call has not started.

        Its call is dropped from the queue (the batcher's, or its model's turn in the pool);
        a request already in a batch whose call waits for a worker is answered, and its
        inputs stay in that batch. A call that has started runs on under predict_timeout
        counted from its own start.
        """
        timeout = self._life.predict_timeout(slot)

        def expire() -> None:
            if answer.done() or future.done():
                return  # answered, or its outcome is on its way
            if batcher is None:
                late = self._pool.cancel_queued(future)
            else:  # one batch at a time: the thread's call is this request's batch's, if any
                late = batcher.withdraw(future) or (thread is not None and not thread.calling)
            if late:
                answer.set_exception(self._life.late_error(slot, timeout))

        return asyncio.get_running_loop().call_later(timeout, expire)

    def _withdraw(self, batcher: Batcher | None, future: asyncio.Future[list[Any]]) -> None:
        """The caller went away: drop its call if it has not started, else let it finish.

        A request still in its batcher's queue (`batcher` is the one it was submitted to) or
        in its model's turn for the pool is cancelled, which ends its lease at once. One
        whose call has started, or whose inputs are in a batch being executed (the batch may
        still wait for a worker), keeps its lease until that call ends: the model must not
        be unloaded or evicted under it. Its outcome is then dropped.
        """
        if batcher is not None:
            if batcher.withdraw(future):
                return
        elif self._pool.cancel_queued(future):
            return
        future.add_done_callback(_drop_outcome)

    async def _acquire(self, slot: Slot) -> Slot:
        """Wait until the model is loaded and take a lease on it."""
        life = self._life
        deadline = time.monotonic() + self._life.settings.request_timeout
        queued: Slot | None = None
        try:
            while True:
                if life.drain.over:
                    raise life.drain.refuse()
                while slot.retirement.retired:
                    replacement = slot.retirement.replacement
                    if replacement is None:
                        raise self._roster.unknown(slot.name, removed=True)
                    slot = replacement
                if slot.ready:
                    self._check_queue(slot, loaded=True)
                    slot.lease()
                    life.leased(slot)
                    return slot
                if queued is not slot:
                    self._check_queue(slot)
                    if queued is not None:
                        queued.remove_waiter()
                    slot.add_waiter()
                    queued = slot
                self._check_failed(slot)
                if life.closing and slot.state is not State.LOADING and slot.load_task is None:
                    raise ShuttingDown()  # admitted, but its model cannot load any more
                now = time.monotonic()
                if slot.needs_load and not slot.retirement.unload_requested:
                    life.start_load(slot)
                remaining = deadline - now
                if remaining <= 0:
                    raise LoadPending(
                        f"model {slot.name!r} is still {slot.state.value} after "
                        f"{self._life.settings.request_timeout:g}s (server.request_timeout)",
                        retry_after=life.load_eta(slot),
                    )
                task = slot.load_task
                if task is None:
                    await life.wait_changed(remaining)
                    continue
                # The drain's end wakes it too: an admitted request never outlives the drain.
                wake: set[asyncio.Future[Any]] = {task, life.drain.ended()}
                done, _ = await asyncio.wait(
                    wake, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if task in done and not task.cancelled():
                    outcome = task.result()
                    if isinstance(outcome, ModelTooLarge):
                        raise ModelTooLarge(  # a fresh error per waiter
                            outcome.name,
                            outcome.size,
                            outcome.budget,
                            measured=outcome.measured,
                            device=outcome.device,
                        )
                    if isinstance(outcome, CapacityExceeded):
                        raise CapacityExceeded(  # a fresh error per waiter
                            outcome.name,
                            outcome.size,
                            outcome.used,
                            outcome.budget,
                            retry_after=outcome.retry_after,
                            device=outcome.device,
                        )
        finally:
            if queued is not None:
                queued.remove_waiter()

    def _check_failed(self, slot: Slot) -> None:
        """A model that can never fit, is inside its backoff, or still has a stuck thread."""
        size = slot.size_bytes if slot.size_bytes is not None else slot.estimate
        failure = slot.failure
        if isinstance(failure, ModelTooLarge) and failure.device != "cpu":
            limit = self._life.budgets.budget(failure.device).limit
            if failure.size > limit:
                raise ModelTooLarge(
                    slot.name, failure.size, limit, measured=failure.measured, device=failure.device
                )
        limit = self._life.budget.limit
        on_host = isinstance(failure, ModelTooLarge) and failure.device == "cpu"
        if on_host and size is not None and size > limit:
            raise ModelTooLarge(slot.name, size, limit, measured=slot.size_bytes is not None)
        now = time.monotonic()
        if slot.state is State.FAILED and now < slot.retry_at:
            if isinstance(slot.failure, InferenceTimeout):
                raise self._life.stuck_error(slot)
            raise ModelFailed(slot.name, slot.error or "", retry_after=slot.retry_at - now)
        if slot.abandoned and slot.state in (State.UNLOADED, State.FAILED):
            raise ModelFailed(
                slot.name,
                f"{slot.error or 'stopped'}; its previous thread is still running",
                retry_after=self._life.settings.retry_backoff.initial,
                what="cannot load yet",
            )

    def _check_queue(self, slot: Slot, *, loaded: bool = False) -> None:
        """Past max_queue requests waiting (for a load, room, or a worker): 503."""
        limit = slot.spec.max_queue or self._life.settings.max_queue
        if (slot.leases if loaded else slot.waiting + slot.leases) < limit:
            return
        loading = slot.state is not State.LOADED
        if loading:
            elapsed = time.monotonic() - slot.load_started if slot.load_task else 0.0
            retry_after = max(1.0, self._life.load_eta(slot) - elapsed)
        else:
            retry_after = self._life.busy_eta(slot)
        full = LoadQueueFull if loading else BusyQueueFull
        raise full(
            f"model {slot.name!r} is {full.kind}: "
            f"{slot.waiting + slot.leases} requests already wait for it (max_queue {limit})",
            retry_after=retry_after,
        )

    def _release(self, slot: Slot, *, served: bool = True) -> None:
        slot.release(served=served)
        self._life.after_request(slot)  # the last request of a model on its way out unloads it


def _drop_outcome(future: asyncio.Future[Any]) -> None:
    """Read the outcome of a call whose caller went away, so that asyncio logs no error."""
    if not future.cancelled():
        future.exception()
