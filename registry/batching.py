"""Dynamic batching: concurrent requests to one model become one call.

A batch is dispatched once it holds as many inputs as recent batches did (an average that
follows the load, capped at `max_size`), or `max_wait` after its first request arrived,
whichever comes first. A lone client keeps that average at 1, so its requests go at once and
batching costs it no latency; 16 busy clients keep it near 16, so a batch goes as soon as
their requests are in instead of waiting for a size they never reach. Requests with
different parameters are never mixed. If a batch call raises, its requests are retried one
by one, so a bad input fails only its own request. One batch per model runs at a time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from registry.errors import InferenceTimeout, Unavailable, WorkerDied
from registry.stats import Timing


@dataclass(frozen=True, slots=True)
class BatchStats:
    """Batches run since the model loaded, and the inputs in them (registry/views.py's)."""

    batches: int
    inputs: int


Run = Callable[[list[Any], Mapping[str, Any]], Awaitable[list[Any]]]


@dataclass(eq=False)  # compared by identity: a deque's remove() must not compare inputs
class _Entry:
    inputs: list[Any]
    parameters: Mapping[str, Any]
    key: str
    arrived: float
    timing: Timing | None = None
    future: asyncio.Future[list[Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Batcher:
    """Collects requests for one model and runs them in batches through `run`."""

    def __init__(self, run: Run, *, max_size: int, max_wait: float) -> None:
        self._run = run
        self.max_size = max_size
        self.max_wait = max_wait
        self._typical = 1.0  # moving average of recent batch sizes, in inputs
        self._queue: deque[_Entry] = deque()
        self._arrived: asyncio.Future[None] | None = None  # the drain waits for a request
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.batched_inputs = 0

    def submit(
        self,
        inputs: Sequence[Any],
        parameters: Mapping[str, Any],
        *,
        timing: Timing | None = None,
    ) -> asyncio.Future[list[Any]]:
        """Queue one request; the future gets its outputs (or its own error)."""
        loop = asyncio.get_running_loop()
        key = json.dumps(parameters, sort_keys=True, default=repr) if parameters else "{}"
        entry = _Entry(list(inputs), parameters, key, loop.time(), timing)
        self._queue.append(entry)
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="batcher")
        return entry.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            first = self._queue[0]
            target = min(self.max_size, max(1, round(self._typical)))
            deadline = first.arrived + self.max_wait
            while self._fill(first.key) < target and loop.time() < deadline:
                await self._next_arrival(loop, deadline)
            batch = self._take(first.key)
            size = sum(len(entry.inputs) for entry in batch)
            self._typical = 0.5 * self._typical + 0.5 * size
            await self._execute(batch)

    async def _next_arrival(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Until the next request arrives or `deadline` (a future and a timer: no task)."""
        self._arrived = arrived = loop.create_future()
        timer = loop.call_at(deadline, _wake, arrived)
        try:
            await arrived
        finally:
            timer.cancel()
            self._arrived = None

    def _fill(self, key: str) -> int:
        return sum(len(e.inputs) for e in self._queue if e.key == key)

    def _take(self, key: str) -> list[_Entry]:
        batch: list[_Entry] = []
        size = 0
        for entry in list(self._queue):
            if entry.future.done():  # withdrawn: its client went away
                self._queue.remove(entry)
                continue
            if entry.key != key:
                continue
            if batch and size + len(entry.inputs) > self.max_size:
                break
            batch.append(entry)
            size += len(entry.inputs)
            self._queue.remove(entry)
        return batch

    async def _execute(self, batch: list[_Entry]) -> None:
        try:
            await self._execute_batch(batch)
        except BaseException:  # cancelled (shutdown): no request may wait for ever
            for entry in batch:
                if not entry.future.done():
                    entry.future.cancel()
            raise

    async def _execute_batch(self, batch: list[_Entry]) -> None:
        inputs = [item for entry in batch for item in entry.inputs]
        started = time.perf_counter()
        try:
            outputs = await self._run(inputs, batch[0].parameters)
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, InferenceTimeout | Unavailable | WorkerDied):
                for entry in batch:  # one request, or the model is stuck or gone: no retry
                    _settle(entry, error=exc)
                return
            for entry in batch:  # isolate the input that broke the batch
                try:
                    _settle(entry, outputs=await self._run(entry.inputs, entry.parameters))
                except Exception as one_exc:
                    _settle(entry, error=one_exc)
            return
        self.batches += 1
        self.batched_inputs += len(inputs)
        seconds = time.perf_counter() - started  # the batch's call: every request's inference
        start = 0
        for entry in batch:
            if entry.timing is not None:
                entry.timing.record(seconds)
            _settle(entry, outputs=outputs[start : start + len(entry.inputs)])
            start += len(entry.inputs)

    def stats(self) -> BatchStats:
        """Batches run and inputs in them, since the model loaded."""
        return BatchStats(batches=self.batches, inputs=self.batched_inputs)

    def withdraw(self, future: asyncio.Future[list[Any]]) -> bool:
        """Drop a request that is still queued (its client went away); False if it runs."""
        for entry in self._queue:
            if entry.future is future:
                self._queue.remove(entry)
                future.cancel()
                return True
        return False

    def fail_queued(self, error: Callable[[], BaseException]) -> None:
        """Fail every queued request with a fresh `error()` (the model got stuck)."""
        while self._queue:
            _settle(self._queue.popleft(), error=error())

    def cancel(self) -> None:
        """Fail every queued request (shutdown)."""
        while self._queue:
            entry = self._queue.popleft()
            if not entry.future.done():
                entry.future.cancel()


def _wake(arrived: asyncio.Future[None]) -> None:
    if not arrived.done():
        arrived.set_result(None)


def _settle(
    entry: _Entry, *, outputs: list[Any] | None = None, error: BaseException | None = None
) -> None:
    if entry.future.done():
        return
    if error is not None:
        entry.future.set_exception(error)
    else:
        entry.future.set_result(outputs if outputs is not None else [])
