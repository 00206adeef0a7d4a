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
    """Inference threads of the registry's own (not the loop's default executor).

    Each loaded model runs on a thread of its own: torch's OpenMP team stays with that
    thread instead of being rebuilt on whichever pool thread a batch lands on (measured:
    batches of one model spread over several threads kept only 1.6 of 2 cores busy). At
    most `workers` calls run at once, across all models. Image decoding shares a pool.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._limit = asyncio.Semaphore(workers)
        self._shared = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._threads: set[ThreadPoolExecutor] = set()
        self._jobs: set[asyncio.Task[Any]] = set()

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished."""
        return len(self._jobs)

    def thread_for(self, name: str) -> ThreadPoolExecutor:
        """A thread for one loaded model; give it back with retire()."""
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._threads.add(thread)
        return thread

    def retire(self, thread: ThreadPoolExecutor | None) -> None:
        """The model is gone: let its thread end once its last job is done."""
        if thread is not None:
            self._threads.discard(thread)
            thread.shutdown(wait=False)

    def submit(
        self, fn: Callable[..., T], *args: Any, thread: ThreadPoolExecutor | None = None
    ) -> asyncio.Future[T]:
        """Run fn(*args) on `thread` (else the shared pool) when a worker slot is free."""
        job = asyncio.get_running_loop().create_task(self._run(thread or self._shared, fn, args))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    async def _run(self, executor: ThreadPoolExecutor, fn: Callable[..., T], args: Any) -> T:
        async with self._limit:
            return await asyncio.wrap_future(executor.submit(_guarded, fn, *args))

    def shutdown(self) -> None:
        """Cancel queued jobs; running ones finish in their threads."""
        for job in list(self._jobs):
            job.cancel()
        for executor in (self._shared, *self._threads):
            executor.shutdown(wait=False, cancel_futures=True)
        self._threads.clear()
