"""Work that must not run on the event loop: loads in their own threads, inference in a pool.

Every thread here is a daemon thread: a model stuck in `predict` or in its loader must not
keep the process alive after shutdown (the interpreter joins non-daemon threads at exit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
Stuck = Callable[["concurrent.futures.Future[Any]"], BaseException]


def default_workers() -> int:
    """Inference workers by default: one per core, at least 2, at most 4."""
    return max(2, min(4, os.cpu_count() or 1))


def run_in_thread(
    fn: Callable[[], T],
    *,
    name: str,
    on_orphan: Callable[[T], None] | None = None,
    on_exit: Callable[[], None] | None = None,
) -> asyncio.Future[T]:
    """Run `fn` in a new daemon thread; the future can be abandoned, the thread cannot.

    Loads get a thread each so that one stuck load cannot starve the others. If the caller
    stops waiting (a load timeout), a result that arrives later is handed to `on_orphan`
    in the thread, so that it can be disposed of. `on_exit` runs on the loop once the
    thread is done (orphan disposed of), so that what it held can be given back.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def runner() -> None:
        try:
            try:
                result = fn()
            except BaseException as exc:
                _post(loop, _fail, future, contained(exc))
                return
            if not _hand_over(loop, future, result) and on_orphan is not None:
                on_orphan(result)
        finally:
            if on_exit is not None:
                _post(loop, on_exit)

    threading.Thread(target=runner, name=name, daemon=True).start()
    return future


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody waits
        return False
    return True


def _hand_over(loop: asyncio.AbstractEventLoop, future: asyncio.Future[T], result: T) -> bool:
    """Give `result` to the future on the loop; False if nobody took it (an orphan)."""
    if future.done():
        return False
    decided = threading.Event()
    taken = [False]

    def settle() -> None:
        if not future.done():
            future.set_result(result)
            taken[0] = True
        decided.set()

    if not _post(loop, settle):
        return False
    while not decided.wait(1.0):
        if loop.is_closed():
            return False
    return taken[0]


def contained(exc: BaseException) -> Exception:
    """Model code's exception, in a form a future accepts and that cannot stop the server.

    SystemExit (argparse, sys.exit) and KeyboardInterrupt must not stop the server, and an
    asyncio future refuses StopIteration (it would leave the request pending for ever).
    """
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration | StopAsyncIteration):
        return exc
    error = RuntimeError(f"{type(exc).__name__}({exc}) raised in a worker thread")
    error.__cause__ = exc
    return error


def _guarded(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except BaseException as exc:
        error = contained(exc)
        if error is exc:
            raise
        raise error from exc


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class DaemonExecutor(concurrent.futures.Executor):
    """A fixed set of daemon threads: what ThreadPoolExecutor is, minus the join at exit."""

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Any, Any] | None]
        self._queue = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Queue fn(*args) for the next free thread."""
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((future, fn, (args, kwargs)))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, (args, kwargs) = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(contained(exc))
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; threads end once their current job is done (never joined)."""
        self._closed = True
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self._queue.get_nowait()
                    if item is not None:
                        item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)


class ModelThread(DaemonExecutor):
    """One loaded model's inference thread, its queue of calls, and its health."""

    def __init__(self, name: str) -> None:
        super().__init__(1, f"model-{name}")
        self.turn = asyncio.Lock()  # one call at a time; the queue waits here, not in the pool
        self.broken: Callable[[], BaseException] | None = None  # set when a call got stuck
        self.calling = False  # a call holds a worker slot (it has started, or is stuck)

    def mark_broken(self, error: Callable[[], BaseException]) -> None:
        """A call got stuck: calls queued behind it raise `error()` instead of waiting."""
        self.broken = error


class InferencePool:
    """Inference threads of the registry's own (not the loop's default executor).

    Each loaded model runs on a thread of its own: torch's OpenMP team stays with that
    thread instead of being rebuilt on whichever pool thread a batch lands on (measured:
    batches of one model spread over several threads kept only 1.6 of 2 cores busy). At
    most `workers` calls run at once, across all models. A call first waits for its model's
    turn, and only then for a worker slot, so a backlog on one model holds no slot that
    another model needs. Image decoding shares a pool.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._limit = asyncio.Semaphore(workers)
        self._shared = DaemonExecutor(workers, "inference")
        self._threads: set[ModelThread] = set()
        self._jobs: set[asyncio.Task[Any]] = set()
        self._started: set[asyncio.Task[Any]] = set()

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished."""
        return len(self._jobs)

    def thread_for(self, name: str) -> ModelThread:
        """A thread for one loaded model; give it back with retire()."""
        thread = ModelThread(name)
        self._threads.add(thread)
        return thread

    def retire(self, thread: ModelThread | None) -> None:
        """The model is gone: let its thread end once its last job is done."""
        if thread is not None:
            self._threads.discard(thread)
            thread.shutdown(wait=False)

    def submit(
        self,
        fn: Callable[..., T],
        *args: Any,
        thread: ModelThread | None = None,
        timeout: float | None = None,
        on_stuck: Stuck | None = None,
    ) -> asyncio.Task[T]:
        """Run fn(*args) on `thread` (else the shared pool) when a worker slot is free.

        A call still running after `timeout` seconds raises what `on_stuck` returns; its
        thread is left to finish on its own (the future it is given says when).
        """
        loop = asyncio.get_running_loop()
        job = loop.create_task(self._run(thread, fn, args, timeout, on_stuck))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    def cancel_queued(self, job: asyncio.Future[Any]) -> bool:
        """Cancel a job that has not reached a thread yet (its caller went away)."""
        if job.done() or job in self._started:
            return False
        job.cancel()
        return True

    async def _run(
        self,
        thread: ModelThread | None,
        fn: Callable[..., T],
        args: Any,
        seconds: float | None,
        on_stuck: Stuck | None,
    ) -> T:
        if thread is None:
            return await self._call(self._shared, fn, args, seconds, on_stuck)
        async with thread.turn:
            return await self._call(thread, fn, args, seconds, on_stuck)

    async def _call(
        self,
        executor: DaemonExecutor,
        fn: Callable[..., T],
        args: Any,
        seconds: float | None,
        on_stuck: Stuck | None,
    ) -> T:
        broken = getattr(executor, "broken", None)
        if broken is not None:
            raise broken()
        job = asyncio.current_task()
        async with self._limit:
            if job is not None:
                self._started.add(job)
            if isinstance(executor, ModelThread):
                executor.calling = True
            try:
                future = executor.submit(_guarded, fn, *args)
                waiter = asyncio.wrap_future(future)
                try:
                    return await asyncio.wait_for(asyncio.shield(waiter), seconds)
                except TimeoutError:
                    waiter.add_done_callback(_consume)  # its late outcome has no reader
                    if on_stuck is None:
                        raise
                    raise on_stuck(future) from None
            finally:
                if job is not None:
                    self._started.discard(job)
                if isinstance(executor, ModelThread):
                    executor.calling = False

    def shutdown(self) -> None:
        """Cancel queued jobs; running ones finish in their (daemon) threads."""
        for job in list(self._jobs):
            job.cancel()
        for executor in (self._shared, *self._threads):
            executor.shutdown(wait=False, cancel_futures=True)
        self._threads.clear()
