"""Process models: a model loaded and run in a worker process of its own (`isolation: process`).

- Workers fork from a stdlib multiprocessing forkserver that imported torch and transformers
  once, so a worker's load does not pay the imports. The forkserver starts on the first
  process model (or in the background at startup when the config has some: `warm()`).
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
import io
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing import popen_forkserver, reduction, spawn, util
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerProcess
from typing import TYPE_CHECKING, Any, Literal

from registry.errors import InferenceTimeout, RegistryError, WorkerDied
from registry.worker import main as worker_main
from registry.worker import memory_figures

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext
    from multiprocessing.process import BaseProcess

    from registry.config import ModelSpec, ServerSettings
    from registry.loaders import LoadContext

log = logging.getLogger("registry")

# What the forkserver imports once, so that a worker's load does not: torch and
# transformers, the registry's loaders, and the modules any transformers model or the
# common pipelines import on their first load (a missing one is skipped).
PRELOAD = [
    "registry.worker",
    "torch",
    "transformers",
    "transformers.pipelines",
    "registry.loaders",
    "registry.loaders.pipeline",
    "registry.loaders.embeddings",
    "registry.loaders.fake",
    "registry.memory",
    "registry.payload",
    "transformers.generation.utils",
    "transformers.masking_utils",
    "transformers.modeling_layers",
    "transformers.pipelines.text_classification",
    "transformers.pipelines.image_classification",
    "transformers.pipelines.feature_extraction",
    "transformers.models.bert.modeling_bert",
    "PIL.Image",
]
PROCESS_FROM = 100 * 1000**2  # auto: models estimated at this size or more get a worker
KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL
Isolation = Literal["thread", "process"]

_lock = threading.Lock()
_context: ForkServerContext | None = None
_live: set[BaseProcess] = set()  # started and not yet reaped


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


def isolation_of(spec: ModelSpec, estimate: int | None, settings: ServerSettings) -> Isolation:
    """Where a model runs: its entry's `isolation`, else the server's, else auto's choice."""
    if spec.isolation is not None:
        return spec.isolation
    if settings.isolation != "auto":
        return settings.isolation
    if spec.loader is not None and spec.loader != "fake":
        return "process"  # user code: a segfault or os._exit must not take the server down
    if estimate is not None and estimate >= PROCESS_FROM:
        return "process"  # a big load would hold the GIL and stall every other model
    return "thread"


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


def live_pids() -> list[int]:
    """Pids of workers started and not yet reaped."""
    with _lock:
        return sorted(p.pid for p in _live if p.pid is not None)


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


def stop(process: BaseProcess, grace: float = KILL_GRACE) -> int | None:
    """SIGTERM, then SIGKILL after `grace`; reap it; its exit code."""
    if getattr(process, "_popen", None) is None:  # not started (yet): nothing to stop
        return None
    if process.exitcode is None:
        with contextlib.suppress(OSError, ValueError):
            process.terminate()
        process.join(grace)
        if process.exitcode is None:
            with contextlib.suppress(OSError, ValueError):
                process.kill()
            process.join(10.0)
    return _reaped(process)


def _reaped(process: BaseProcess) -> int | None:
    code = process.exitcode
    if code is not None:
        with _lock:
            _live.discard(process)
        with contextlib.suppress(ValueError):
            process.close()
    return code


def stop_all() -> int:
    """Kill every worker still running (shutdown, after the unloads); how many there were."""
    with _lock:
        processes = list(_live)
    for process in processes:
        stop(process, grace=0.2)
    return len(processes)


class ProcessModel:
    """The server's side of one worker: a `Model` whose calls cross a pipe."""

    isolation = "process"

    def __init__(
        self, name: str, process: BaseProcess, conn: Connection, predict_timeout: float
    ) -> None:
        self.name = name
        self.pid = process.pid
        self.predict_timeout = predict_timeout
        self.param_bytes = 0
        self.device: str | None = None  # where the worker's model runs, as it reported
        self.memory: dict[str, int] = {}
        self.reserved = 0  # bytes the budget held when the load ended (set by the manager)
        self._process = process
        self._conn = conn
        self._call = threading.Lock()
        self._dead: str | None = None  # how the worker ended, once it did

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
        return self._dead is None

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
            self.memory = memory
        return list(outputs)

    def _round_trip(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        if self._dead is not None:
            raise WorkerDied(self.name, self.pid, self._dead)
        try:
            self._conn.send(message)
            if not self._conn.poll(self.predict_timeout):
                self._end(f"killed after running past predict_timeout ({self.predict_timeout:g}s)")
                raise InferenceTimeout(self.name, self.predict_timeout)
            reply: tuple[Any, ...] = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            raise WorkerDied(self.name, self.pid, self._end()) from None
        return reply

    def _end(self, why: str | None = None) -> str:
        """Stop and reap the worker; remember how it ended."""
        if self._dead is None:
            code = stop(self._process)
            self._dead = why or describe_exit(code)
            with contextlib.suppress(OSError):
                self._conn.close()
            log.warning("worker of %s (pid %s) ended: %s", self.name, self.pid, self._dead)
        return self._dead

    def abort(self) -> None:
        """Kill the worker now (an inference timed out); its call raises WorkerDied."""
        if self._dead is None:
            with contextlib.suppress(OSError, ValueError):
                self._process.kill()

    def close(self) -> None:
        """Ask the worker to exit, reap it, kill it if it does not go."""
        if self._dead is not None:
            return
        got = self._call.acquire(timeout=KILL_GRACE)
        try:
            if got:
                with contextlib.suppress(EOFError, OSError):
                    self._conn.send(("close",))
                    if self._conn.poll(KILL_GRACE * 5):
                        self._conn.recv()
                self._process.join(KILL_GRACE)
            code = stop(self._process)
            self._dead = "stopped" if code == 0 else describe_exit(code)
            with contextlib.suppress(OSError):
                self._conn.close()
        finally:
            if got:
                self._call.release()


def load_in_worker(
    ctx: LoadContext, settings: ServerSettings, *, load_timeout: float
) -> ProcessModel:
    """Start a worker, load the model in it; kill it past `load_timeout` (blocking)."""
    started = time.monotonic()
    mp = context()
    parent_end, child_end = mp.Pipe()
    forkserver = multiprocessing.forkserver._forkserver
    forkserver.ensure_running()
    server_pid = forkserver_pid() or os.getpid()
    process = WorkerProcess(
        target=worker_main,
        args=(child_end, ctx, settings.torch_threads, server_pid),
        name=f"model-{ctx.name}",
        daemon=True,
    )
    with _lock:
        _live.add(process)
    try:
        process.start()
    except BaseException:
        with _lock:
            _live.discard(process)
        raise
    child_end.close()
    timeout = ctx.spec.predict_timeout or settings.predict_timeout
    model = ProcessModel(ctx.name, process, parent_end, timeout)
    remaining = load_timeout - (time.monotonic() - started)
    try:
        ready = parent_end.poll(max(0.0, remaining))
        reply = parent_end.recv() if ready else None
    except (EOFError, OSError):
        how = model._end()
        raise WorkerDied(ctx.name, model.pid, how, during="load") from None
    except BaseException:
        model._end("the load was abandoned")
        raise
    if reply is None:
        model._end("killed: load_timeout")
        raise TimeoutError(f"load timed out after {load_timeout:g}s; its worker was killed")
    if reply[0] == "raise":
        model._end()
        error = reply[1]
        raise error if isinstance(error, Exception | RegistryError) else RuntimeError(str(error))
    _, param_bytes, memory, device = reply
    model.param_bytes = int(param_bytes or 0)
    model.device = device
    model.memory = memory
    model.reserved = model.size_bytes
    return model


def warm_for(specs: Mapping[str, ModelSpec], settings: ServerSettings, base_dir: Any) -> bool:
    """Start the forkserver now if any model will run in a worker (blocking; use a thread)."""
    from registry.loaders import estimate_bytes
    from registry.sources import resolve_source

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
            return True
    return False
