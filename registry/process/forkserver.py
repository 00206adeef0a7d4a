"""Worker processes: the forkserver they fork from, and each one's start, stop and reaping.

- Workers fork from a stdlib multiprocessing forkserver that imported torch and transformers
  once (PRELOAD), so a worker's load does not pay the imports. The forkserver starts on the
  first process model (or in the background at startup when the config has some: `warm()`).
- A `Worker` is one process as the server holds it. Several paths may end one at the same
  time (its model's close, a timeout, a cancelled load, the shutdown's sweep, the death
  watch): they take turns, and it is reaped exactly once. `live_pids()` are those started
  and not yet reaped; `stop_all()` ends them at shutdown.
- A `WorkerLoad` lets the event loop end a load running in a worker: it kills the worker.
The model's side (the pipe protocol, timing, memory) is registry/process/proxy.py.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
from multiprocessing import popen_forkserver, reduction, spawn, util
from multiprocessing.context import ForkServerProcess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext
    from multiprocessing.process import BaseProcess

# What the forkserver imports once, so that a worker's load does not: torch and
# transformers, the registry's loaders, and the modules any transformers model or the
# common pipelines import on their first load (a missing one is skipped).
PRELOAD = [
    "registry.process.child",
    # a load's LoadContext holds a ModelSpec: unpickling it imports pydantic
    "registry.config.schema",
    "registry.sources",
    "torch",
    "transformers",
    "transformers.pipelines",
    "registry.loaders",
    "registry.loaders.pipeline",
    "registry.loaders.embeddings",
    "registry.loaders.fake",
    "registry.memory.sizes",
    "registry.payload",
    "transformers.generation.utils",
    "transformers.masking_utils",
    "transformers.modeling_layers",
    "transformers.pipelines.text_classification",
    "transformers.pipelines.image_classification",
    "transformers.pipelines.feature_extraction",
    "transformers.models.bert.modeling_bert",
    "PIL.Image",
    "registry.process.preload",  # last: pays once, here, what each worker's first load would pay
]
KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL

_lock = threading.Lock()
_context: ForkServerContext | None = None
_live: set[Worker] = set()  # started and not yet reaped


class _WorkerPopen(popen_forkserver.Popen):
    """The stdlib's forkserver launch, minus re-importing the server's __main__ in the worker.

    multiprocessing re-imports the parent's main module in every child (for pickled
    functions defined there); ours would be `app.cli`, which pulls in the web stack (~0.5 s
    and tens of MB per worker) that a worker never uses.
    """

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_name", None)
        prep_data.pop("init_main_from_path", None)
        buf = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        fds: list[int] = self._fds  # type: ignore[attr-defined]
        self.sentinel, w = multiprocessing.forkserver.connect_to_new_process(fds)
        parent_w = os.dup(w)  # the child's sentinel of us, as the stdlib keeps it
        close_fds = util.close_fds  # type: ignore[attr-defined]
        self.finalizer = util.Finalize(self, close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = multiprocessing.forkserver.read_signed(self.sentinel)


class WorkerProcess(ForkServerProcess):
    """A forkserver process launched by _WorkerPopen."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _WorkerPopen(process_obj)


def context() -> ForkServerContext:
    """The forkserver context (its server starts on first use)."""
    global _context
    with _lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _context = ctx
        return _context


def warm() -> None:
    """Start the forkserver and let it import torch/transformers (blocking; use a thread)."""
    context()
    multiprocessing.forkserver.ensure_running()


def forkserver_pid() -> int | None:
    """The forkserver's pid, if it runs."""
    server = multiprocessing.forkserver._forkserver
    pid = getattr(server, "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


def live_pids(*, spares: bool = False) -> list[int]:
    """Pids of workers started and not yet reaped (spares only if asked for)."""
    with _lock:
        return sorted(w.pid for w in _live if w.pid is not None and (spares or not w.spare))


def describe_exit(code: int | None) -> str:
    """'killed by signal SIGSEGV', 'exited with code 3'..."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's OOM killer sends this)" if -code == signal.SIGKILL else ""
        return f"killed by signal {name}{hint}"
    return f"exited with code {code}"


class Worker:
    """One worker process as the server holds it: started once, stopped and reaped once.

    Several paths may end a worker at the same time (its model's close, a timeout, a
    cancelled load, the shutdown's sweep, the death watch); they take turns here, and the
    first to reap it keeps its exit code for the others. `kill()` takes no turn: it only
    sends a signal, so the event loop may call it.
    """

    def __init__(self, process: BaseProcess, *, spare: bool = False) -> None:
        self.process = process
        self.spare = spare  # started ahead, no model yet (registry/process/spare.py)
        self.pid: int | None = None
        self.code: int | None = None  # the exit code, once reaped
        self.reaped = False
        self._turn = threading.Lock()

    def start(self) -> None:
        """Start the process (registered as live first, so that shutdown finds it)."""
        with _lock:
            _live.add(self)
        try:
            self.process.start()
        except BaseException:
            with _lock:
                _live.discard(self)
            raise
        self.pid = self.process.pid

    def kill(self) -> None:
        """SIGKILL it now, unless it is already reaped (never blocks)."""
        if not self.reaped:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                self.process.kill()

    def sentinel(self) -> int | None:
        """A duplicate of its sentinel (readable once it has exited; the caller closes it),
        None once it is reaped."""
        with self._turn:
            if self.reaped:
                return None
            try:
                return os.dup(self.process.sentinel)
            except (OSError, ValueError):
                return None

    def wait(self, timeout: float) -> None:
        """Wait at most `timeout` seconds for it to exit by itself."""
        with self._turn:
            if not self.reaped and getattr(self.process, "_popen", None) is not None:
                self.process.join(timeout)

    def stop(self, grace: float = KILL_GRACE) -> int | None:
        """SIGTERM, then SIGKILL after `grace`; reap it; its exit code."""
        with self._turn:
            if self.reaped:
                return self.code
            process = self.process
            if getattr(process, "_popen", None) is None:  # not started: nothing to stop
                return None
            if process.exitcode is None:
                with contextlib.suppress(OSError, ValueError):
                    process.terminate()
                process.join(grace)
                if process.exitcode is None:
                    with contextlib.suppress(OSError, ValueError):
                        process.kill()
                    process.join(10.0)
            code = process.exitcode
            if code is not None:
                self.code = code
                self.reaped = True
                with _lock:
                    _live.discard(self)
                with contextlib.suppress(ValueError):
                    process.close()
            return code


def stop_all() -> int:
    """Kill every worker still running (shutdown, after the unloads); how many there were."""
    with _lock:
        running = list(_live)
    for worker in running:
        worker.stop(grace=0.2)
    return len(running)


class WorkerLoad:
    """A load running in a worker, which another thread may end (its load was cancelled,
    its model retired, shutdown): ending it kills the worker, whose loader thread then
    reaps it and returns, so the load's bytes can be released at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        self.ended: str | None = None  # why it was ended, once it was

    def attach(self, worker: Worker) -> None:
        """The load's worker has started (killed now if the load was ended meanwhile)."""
        with self._lock:
            self._worker = worker
            ended = self.ended is not None
        if ended:
            worker.kill()

    def end(self, why: str) -> None:
        """Stop the load: kill its worker (or the one about to start)."""
        with self._lock:
            if self.ended is None:
                self.ended = why
            worker = self._worker
        if worker is not None:
            worker.kill()
