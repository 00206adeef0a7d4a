"""The end of a shutdown's drain: admitted requests still waiting get 503 shutting_down.

Requests admitted before shutdown began are served while the drain lasts (a load they wait
for included). When `drain_timeout` has passed, every request still waiting (for a load, for
its model's turn, or for a stuck call) is answered 503 with Retry-After, so that the HTTP
server never has to cancel a request and answer a bare 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from registry.errors import ShuttingDown

T = TypeVar("T")


class Drain:
    """Tracks what admitted requests await, and fails it when the drain ends."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self.over = False  # the drain timeout has passed
        self.cut_off = 0  # admitted requests answered 503 because the drain ended
        self._notify = notify
        self._answers: set[asyncio.Future[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._ended: asyncio.Future[None] | None = None

    def ended(self) -> asyncio.Future[None]:
        """A future done when the drain ends (for requests that wait for a load)."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            if self.over:
                self._ended.set_result(None)
        return self._ended

    def answer(self, job: asyncio.Future[T]) -> asyncio.Future[T]:
        """What a request awaits: `job`'s outcome, or ShuttingDown once the drain has ended."""
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def copy(done: asyncio.Future[T]) -> None:
            if answer.done():
                return
            if done.cancelled():  # the pool or the batcher dropped the job: shutdown
                answer.set_exception(ShuttingDown())
            elif (error := done.exception()) is not None:
                answer.set_exception(error)
            else:
                answer.set_result(done.result())

        job.add_done_callback(copy)
        self._answers.add(answer)
        answer.add_done_callback(self._answers.discard)
        return answer

    def refuse(self) -> ShuttingDown:
        """An admitted request finds the drain over: counted as cut off; its error."""
        self.cut_off += 1
        return ShuttingDown()

    def end_at(self, when: float) -> None:
        """End the drain at loop time `when` (at once if that has passed)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self.end)

    def end(self) -> None:
        """The drain is over: every admitted request still waiting gets 503 shutting_down."""
        if self._timer is not None:
            self._timer.cancel()
        if self.over:
            return
        self.over = True
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        for answer in list(self._answers):
            if not answer.done():
                answer.set_exception(ShuttingDown())
                self.cut_off += 1
        self._notify()
