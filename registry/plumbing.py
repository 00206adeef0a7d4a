"""What the lifecycle and the parts it owns share on the event loop: the tasks they start
(kept referenced until they end), the wake-up on every state change, and whether shutdown
has begun. It holds no model state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class Plumbing:
    """Tasks, change notification and the closing flag (one per lifecycle)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self._closing = False

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: no load starts from then on."""
        return self._closing

    def begin_closing(self) -> None:
        """Shutdown has begun."""
        self._closing = True

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start a task that this object keeps referenced until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def notify(self) -> None:
        """Wake everything waiting for a state change."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, seconds: float | None) -> None:
        """Wait for the next state change, at most `seconds`."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
