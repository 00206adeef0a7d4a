"""Process models: a model loaded and run in a worker process of its own (`isolation: process`).

- Workers fork from a forkserver that imported torch and transformers once; starting,
  stopping and reaping them exactly once is registry/process/forkserver.py. A load takes the spare
  worker started ahead (registry/process/spare.py) when one is ready, else starts a worker.
- Messages cross the pipe as one protocol-5 pickle, large buffers out of band
  (registry/process/wire.py); the model's inference thread waits on the pipe, off the event loop.
- A `ProcessModel` is a `Model`: `predict()` is a pipe round trip; `close()` asks the worker
  to exit and reaps it (killing it if it does not go). It times itself: a load past
  load_timeout or a call past predict_timeout kills the worker (SIGTERM, then SIGKILL after
  KILL_GRACE) and raises; a worker that dies raises WorkerDied naming the signal or exit code.
- Orphans: each worker gets SIGKILL when the forkserver exits (PR_SET_PDEATHSIG), and the
  forkserver exits when the server does; a worker waiting for a request also sees pipe EOF.
- Memory: `size_bytes` is the larger of the parameter bytes (measured in the worker) and
  the worker's private dirty memory (/proc/<pid>/smaps_rollup), refreshed while it serves.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing.forkserver
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Literal

from registry.config.schema import GENERATION_TASK
from registry.errors import InferenceTimeout, RegistryError, WorkerDied
from registry.process import wire
from registry.process.child import main as worker_main
from registry.process.child import memory_figures
from registry.process.forkserver import (
    KILL_GRACE,
    Worker,
    WorkerLoad,
    WorkerProcess,
    context,
    describe_exit,
    forkserver_pid,
    warm,
)
from registry.process.forkserver import live_pids as live_pids
from registry.process.forkserver import stop_all as stop_workers
from registry.process.spare import Spare, SpareKeeper

if TYPE_CHECKING:
    from registry.config.schema import ModelSpec, ServerSettings
    from registry.loaders import LoadContext

__all__ = [
    "KILL_GRACE",
    "Isolation",
    "ProcessModel",
    "WorkerLoad",
    "forkserver_pid",
    "isolation_of",
    "live_pids",
    "load_in_worker",
    "spares",
    "stop_all",
    "warm",
    "warm_for",
]

log = logging.getLogger("registry")

PROCESS_FROM = 100 * 1000**2  # auto: models estimated at this size or more get a worker
Isolation = Literal["thread", "process"]


def isolation_of(spec: ModelSpec, estimate: int | None, settings: ServerSettings) -> Isolation:
    """Where a model runs: its entry's `isolation`, else the server's, else auto's choice."""
    if spec.isolation is not None:
        return spec.isolation
    if settings.isolation != "auto":
        return settings.isolation
    if spec.task == GENERATION_TASK:
        return "thread"  # each token a pipe round trip less (registry/process/generating.py)
    if spec.loader is not None and spec.loader != "fake":
        return "process"  # user code: a segfault or os._exit must not take the server down
    if estimate is not None and estimate >= PROCESS_FROM:
        return "process"  # a big load would hold the GIL and stall every other model
    return "thread"


class ProcessModel:
    """The server's side of one worker: a `Model` whose calls cross a pipe."""

    isolation = "process"

    def __init__(self, name: str, worker: Worker, conn: Connection, predict_timeout: float) -> None:
        self.name = name
        self.pid = worker.pid
        self.predict_timeout = predict_timeout
        self.param_bytes = 0
        self.device: str | None = None  # where the worker's model runs, as it reported
        self.memory: dict[str, int] = {}
        self.reserved = 0  # bytes the budget held when the load ended (loaded())
        self.exited = False  # the death watch saw the process end (saw_exit())
        self.lost_in_call = False  # a call saw the worker die, or killed it (a timeout)
        self._worker = worker
        self._conn = conn
        self._call = threading.Lock()
        self._sending = threading.Lock()  # a round trip's message, or a generation's drop
        self._ending = threading.Lock()  # _end() and close() take turns
        self._dead: str | None = None  # how the worker ended, once it did

    @property
    def worker(self) -> ProcessModel:
        """Its worker process's handle (registry/loaders/interface.WorkerHandle): itself."""
        return self

    def saw_exit(self) -> None:
        """The death watch saw the worker's process end (registry/process/supervision.py)."""
        self.exited = True

    def loaded(self, param_bytes: int, memory: dict[str, int], device: str | None) -> None:
        """The worker's load has ended: what it measured; the budget holds its size now."""
        self.param_bytes = param_bytes
        self.device = device
        self.memory = memory
        self.reserved = self.size_bytes

    @property
    def private_bytes(self) -> int:
        """The worker's private dirty memory at the last measurement."""
        return self.memory.get("private", 0)

    @property
    def size_bytes(self) -> int:
        """What the budget tracks: max(parameter bytes, the worker's private memory)."""
        return max(self.param_bytes, self.private_bytes)

    @property
    def alive(self) -> bool:
        """False once the worker has died or was stopped."""
        return self._dead is None and not self.exited

    @property
    def how(self) -> str | None:
        """How the worker ended, once it was reaped."""
        return self._dead

    def sentinel(self) -> int | None:
        """A duplicate of the worker's sentinel, readable once it has exited (the caller
        closes it); None if it is already reaped."""
        return self._worker.sentinel()

    def refresh_memory(self) -> None:
        """Read the worker's smaps_rollup now (the worker also reports it with each reply)."""
        if self.alive and self.pid is not None:
            figures = memory_figures(self.pid)
            if figures:
                self.memory = figures

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """One round trip; WorkerDied if the worker dies, InferenceTimeout past the timeout."""
        with self._call:
            reply = self._round_trip(("predict", list(inputs), dict(parameters)))
        if reply[0] == "raise":
            raise reply[1]
        _, outputs, memory = reply
        if memory:
            self.memory = memory  # measured after this call (registry/process/child.py)
        return list(outputs)

    def _round_trip(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        if self._dead is not None:
            raise WorkerDied(self.name, self.pid, self._dead)
        try:
            with self._sending:
                wire.send(self._conn, message)
            if not self._conn.poll(self.predict_timeout):
                self.lost_in_call = True
                self._end(f"killed after running past predict_timeout ({self.predict_timeout:g}s)")
                raise InferenceTimeout(self.name, self.predict_timeout)
            reply: tuple[Any, ...] = wire.recv(self._conn)
        except (EOFError, OSError, BrokenPipeError):
            self.lost_in_call = True
            raise WorkerDied(self.name, self.pid, self._end()) from None
        return reply

    def end(self, why: str | None = None) -> str:
        """Stop and reap the worker (a load that failed or was given up); how it ended."""
        return self._end(why)

    def _end(self, why: str | None = None, *, quiet: bool = False) -> str:
        """Stop and reap the worker; remember how it ended (the first path to get here)."""
        with self._ending:
            if self._dead is None:
                code = self._worker.stop()
                self._dead = why or describe_exit(code)
                with contextlib.suppress(OSError):
                    self._conn.close()
                if not quiet:
                    log.warning("worker of %s (pid %s) ended: %s", self.name, self.pid, self._dead)
            return self._dead

    def reap(self) -> str:
        """The worker has exited (the death watch saw it): reap it; how it ended."""
        return self._end(quiet=True)

    def abort(self) -> None:
        """Kill the worker now (an inference timed out); its call raises WorkerDied."""
        if self._dead is None:
            self._worker.kill()

    def close(self) -> None:
        """Ask the worker to exit, reap it, kill it if it does not go."""
        if self._dead is not None:
            return
        got = self._call.acquire(timeout=KILL_GRACE)
        try:
            with self._ending:
                if self._dead is not None:
                    return
                if got:
                    with contextlib.suppress(EOFError, OSError), self._sending:
                        wire.send(self._conn, ("close",))
                        if self._conn.poll(KILL_GRACE * 5):
                            wire.recv(self._conn)
                    self._worker.wait(KILL_GRACE)
                code = self._worker.stop()
                self._dead = "stopped" if code == 0 else describe_exit(code)
                with contextlib.suppress(OSError):
                    self._conn.close()
        finally:
            if got:
                self._call.release()


def start_worker(*, spare: bool = False) -> tuple[Worker, Connection]:
    """Fork a worker from the forkserver (blocking); it starts, says "ready" and waits for
    its "load" (registry/process/child.py)."""
    mp = context()
    parent_end, child_end = mp.Pipe()
    forkserver = multiprocessing.forkserver._forkserver
    forkserver.ensure_running()
    server_pid = forkserver_pid() or os.getpid()
    worker = Worker(
        WorkerProcess(target=worker_main, args=(child_end, server_pid), name="worker", daemon=True),
        spare=spare,
    )
    try:
        worker.start()
    finally:
        child_end.close()
    return worker, parent_end


spares = SpareKeeper(
    functools.partial(start_worker, spare=True)
)  # the spare worker (registry/process/spare.py)


def stop_all() -> int:
    """Shutdown: end the spare and keep none, then kill every worker still running (after
    the unloads); how many workers there were, the spare not counted."""
    spares.stop()
    return stop_workers()


def load_in_worker(
    ctx: LoadContext,
    settings: ServerSettings,
    *,
    load_timeout: float,
    handle: WorkerLoad | None = None,
    kind: type[ProcessModel] | None = None,
) -> ProcessModel:
    """Load the model in the spare worker (else in a worker started now); kill it past
    `load_timeout` (blocking).

    `handle` lets another thread end the load (WorkerLoad.end kills the worker). `kind` is
    the proxy's class (registry/process/generating.py's for a text-generation model).
    """
    spares.enable()
    try:
        return _load(ctx, settings, load_timeout, handle, kind or ProcessModel)
    finally:
        spares.refill()  # the next spare starts now that this load no longer needs the CPU


class _SpareLost(Exception):
    """The spare taken for a load died before it read the load (its pipe closed first)."""


def _load(
    ctx: LoadContext,
    settings: ServerSettings,
    load_timeout: float,
    handle: WorkerLoad | None,
    kind: type[ProcessModel],
) -> ProcessModel:
    deadline = time.monotonic() + load_timeout
    if handle is not None and handle.ended is not None:
        raise RuntimeError(f"the load was stopped before its worker started ({handle.ended})")
    job = _Job(ctx, settings, load_timeout, deadline, handle, kind)
    spare: Spare | None = spares.take()
    if spare is not None:
        try:
            return _load_in(spare.worker, spare.conn, job, spare=True)
        except _SpareLost:  # killed as the load took it: this load gets a worker of its own
            spares.discard(spare, "died before it read its load")
    worker, conn = start_worker()
    return _load_in(worker, conn, job, spare=False)


@dataclass(frozen=True)
class _Job:
    ctx: LoadContext
    settings: ServerSettings
    load_timeout: float
    deadline: float
    handle: WorkerLoad | None
    kind: type[ProcessModel]


def _load_in(worker: Worker, conn: Connection, job: _Job, *, spare: bool) -> ProcessModel:
    """Send the load to `worker` and wait for its reply (a fresh worker reads it once its
    start-up is done); the worker acknowledges it first ("loading")."""
    ctx, settings, handle = job.ctx, job.settings, job.handle
    if handle is not None:
        handle.attach(worker)
    timeout = ctx.spec.predict_timeout or settings.predict_timeout
    model = job.kind(ctx.name, worker, conn, timeout)
    acknowledged = False
    reply: tuple[Any, ...] | None = None
    try:
        with contextlib.suppress(BrokenPipeError, OSError):  # if it died, EOF says so below
            wire.send(conn, ("load", ctx, settings.torch_threads))
        while reply is None and conn.poll(max(0.0, job.deadline - time.monotonic())):
            message: tuple[Any, ...] = wire.recv(conn)
            if message[0] == "loading":
                acknowledged = True
            elif message[0] != "ready":
                reply = message
    except (EOFError, OSError):
        ended = handle.ended if handle is not None else None
        if spare and not acknowledged and ended is None:
            raise _SpareLost() from None
        how = model.end(None if ended is None else f"killed: {ended}")
        raise WorkerDied(ctx.name, model.pid, how, during="load") from None
    except BaseException:
        model.end("the load was abandoned")
        raise
    if reply is None:
        model.end("killed: load_timeout")
        raise TimeoutError(f"load timed out after {job.load_timeout:g}s; its worker was killed")
    if reply[0] == "raise":
        model.end()
        error = reply[1]
        raise error if isinstance(error, Exception | RegistryError) else RuntimeError(str(error))
    _, param_bytes, memory, device = reply
    model.loaded(int(param_bytes or 0), memory, device)
    return model


def warm_for(specs: Mapping[str, ModelSpec], settings: ServerSettings, base_dir: Any) -> bool:
    """Start the forkserver and the spare worker now if any model will run in a worker
    (blocking; use a thread)."""
    from registry.loaders import estimate_bytes
    from registry.sources import resolve_source

    since = spares.stops  # a shutdown while the forkserver starts keeps no spare after it

    for spec in specs.values():
        try:
            estimate = estimate_bytes(spec, resolve_source(spec.source, base_dir))
        except ValueError:
            estimate = None
        if isolation_of(spec, estimate, settings) == "process":
            try:
                warm()
            except Exception:  # the first process model's load will say what is wrong
                log.exception("could not start the worker forkserver")
                return False
            spares.enable(since)  # so that the first process model's load pays no start
            return True
    return False
