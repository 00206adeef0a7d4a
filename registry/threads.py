"""Work that must not run on the event loop: loads in their own threads, inference in a pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def default_workers() -> int:
    """Inference workers by default: one per core, at least 2, at most 4."""
    return max(2, min(4, os.cpu_count() or 1))


def run_in_thread(
    fn: Callable[[], T], *, name: str, on_orphan: Callable[[T], None] | None = None
) -> asyncio.Future[T]:
    """Run `fn` in a new daemon thread; the future can be abandoned, the thread cannot.

    Loads get a thread each so that one stuck load cannot starve the others. If the caller
    stops waiting (a load timeout), a result that arrives later is handed to `on_orphan`
    in the thread, so that it can be disposed of.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def runner() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_fail, future, contained(exc))
            return
        if future.done() or loop.is_closed():
            if on_orphan is not None:
                on_orphan(result)
            return
        try:
            loop.call_soon_threadsafe(_settle, future, result, on_orphan)
        except RuntimeError:
            if on_orphan is not None:
                on_orphan(result)

    threading.Thread(target=runner, name=name, daemon=True).start()
    return future


def contained(exc: BaseException) -> Exception:
    """User code's SystemExit (argparse, sys.exit) must not stop the server: wrap it."""
    if isinstance(exc, Exception):
        return exc
    error = RuntimeError(f"{type(exc).__name__}({exc}) raised in a worker thread")
    error.__cause__ = exc
    return error


def _guarded(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except Exception:
        raise
    except BaseException as exc:
        raise contained(exc) from exc


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _settle(future: asyncio.Future[T], result: T, on_orphan: Callable[[T], None] | None) -> None:
    if not future.done():
        future.set_result(result)
    elif on_orphan is not None:
        # Abandoned between the thread's check and now: dispose of it off the loop.
        threading.Thread(target=on_orphan, args=(result,), daemon=True).start()


class InferencePool:
    """A thread pool of the registry's own for inference (not the loop's default executor)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self.pending = 0  # submitted jobs not finished

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run fn(*args) in the pool; the returned future completes when the thread is done."""
        self.pending += 1
        future = asyncio.wrap_future(self._executor.submit(_guarded, fn, *args))
        future.add_done_callback(self._done)
        return future

    def _done(self, _: asyncio.Future[Any]) -> None:
        self.pending -= 1

    def shutdown(self) -> None:
        """Cancel queued jobs; running ones finish in their threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
