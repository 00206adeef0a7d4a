"""The loop inside a model's worker process: load once, then answer calls over a pipe.

The parent side (starting, timing, killing, measuring) is registry/process/proxy.py. Messages:

    parent -> worker   ("load", ctx, torch_threads) once, then
                       ("predict", inputs, parameters) | ("close",), and for a generation
                       model ("start", id, request) | ("step", ids) | ("drop", ids)
    worker -> parent   ("ready", memory) once started, ("loading",) once it read its load,
                       then ("loaded", param_bytes, memory, device) | ("ok", outputs, memory)
                       | ("raise", exception) | ("closed",); nothing for a "drop"

A generation's messages (its sessions stay here, keyed by the parent's id) are
registry/process/generating.py's.

A worker is started before it has a model (the spare, registry/process/spare.py): it sends
"ready" once its start-up is done and waits for its "load" (a "close" or EOF ends it).

`memory` is the worker's own /proc/self/smaps_rollup figures, or `{}` (the server keeps its
last ones). A call that grew the process (its peak RSS rose: a cheap getrusage) is measured
before its reply, so the server checks the growth of the call it has just served; else the
worker measures itself after a reply (off the request's path, at most every MEASURE_EVERY
seconds: a read of smaps_rollup costs milliseconds in a process that imported torch) and
sends the figures with the next reply.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import gc
import os
import pickle
import resource
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from registry.errors import RegistryError
from registry.generation import Generation, step_each
from registry.process import wire

MEASURE_EVERY = 0.2  # seconds between two smaps_rollup reads in a busy worker
_PR_SET_PDEATHSIG = 1


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """Rss, Pss, Private_Clean, Private_Dirty... of a process, in bytes ({} if unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read().decode()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def memory_figures(pid: int | str = "self") -> dict[str, int]:
    """private (Private_Dirty), uss (Private_Clean + Private_Dirty) and pss, in bytes."""
    rollup = smaps_rollup(pid)
    if not rollup:
        return {}
    dirty = rollup.get("Private_Dirty", 0)
    return {
        "private": dirty,
        "uss": dirty + rollup.get("Private_Clean", 0),
        "pss": rollup.get("Pss", 0),
        "rss": rollup.get("Rss", 0),
    }


def _die_with_parent(parent: int) -> None:
    """Get SIGKILL when the forkserver (our parent) exits; it exits when the server does."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    # The forkserver exits when every holder of its "alive" pipe's write end has closed it;
    # workers inherit that end, and a hung one would keep the forkserver (and so itself)
    # alive after the server died. Only the server needs to hold it.
    import multiprocessing.forkserver as forkserver

    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
        setattr(server, "_forkserver_alive_fd", None)  # noqa: B010 (private attribute)
    # Ctrl-C in a terminal reaches the whole process group: the server drains and closes us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def portable(exc: BaseException) -> BaseException:
    """The exception itself if the parent can unpickle it, else a RuntimeError naming it."""
    cls = type(exc)
    known = cls.__module__ == "builtins" or isinstance(exc, RegistryError)
    if known and isinstance(exc, Exception):
        with contextlib.suppress(Exception):
            pickle.loads(pickle.dumps(exc))
            return exc
    if cls.__module__ == "builtins" and isinstance(exc, Exception):
        return getattr(builtins, cls.__name__)(str(exc))  # type: ignore[no-any-return]
    if not isinstance(exc, Exception):  # SystemExit from user code: the worker survives it
        return RuntimeError(f"{cls.__name__}({exc}) raised in the model's worker process")
    return RuntimeError(f"{cls.__name__}: {exc}")


def main(conn: Connection, parent: int) -> None:
    """The worker's entry point (a multiprocessing target): start, then wait for the model
    to load (a LoadContext in the "load" message)."""
    # The objects inherited from the forkserver (torch, transformers) stay out of every
    # collection: walking them would touch, and so copy, their pages in every worker.
    gc.freeze()
    _die_with_parent(parent)
    from registry.loaders import load_model
    from registry.loaders.interface import device_of
    from registry.loaders.torch_setup import configure
    from registry.memory.sizes import measure_bytes
    from registry.payload import to_jsonable

    if not conn.poll(0):  # a spare, with time to spare: pay the first-call costs now
        from registry.process.preload import practice

        practice()
    try:
        wire.send(conn, ("ready", memory_figures()))
        message = wire.recv(conn)
    except (EOFError, OSError):  # the server is gone, or no longer needs this spare
        os._exit(0)
    if message[0] != "load":
        return
    _, ctx, torch_threads = message
    wire.send(conn, ("loading",))  # taken: a death from now on is this load's
    configure(torch_threads)
    try:
        model = load_model(ctx)
        param_bytes = measure_bytes(model)
    except BaseException as exc:  # SystemExit from user code included
        wire.send(conn, ("raise", portable(exc)))
        return
    gc.freeze()  # the load's objects too: a full collection walking them stalls every call
    wire.send(conn, ("loaded", param_bytes, memory_figures(), device_of(model)))
    measured = time.monotonic()
    peak = _peak_rss()
    pending: dict[str, int] = {}  # measured after a reply, sent with the next one
    generations: dict[int, Generation] = {}  # by the parent's id (registry/process/generating.py)
    while True:
        try:
            message = wire.recv(conn)
        except (EOFError, OSError):  # the server is gone
            os._exit(0)
        if message[0] == "close":
            model.close()
            wire.send(conn, ("closed",))
            return
        if message[0] == "drop":  # generations that ended: no reply
            for gid in message[1]:
                ended = generations.pop(gid, None)
                if ended is not None:
                    ended.close()
            continue
        try:
            if message[0] == "predict":
                _, inputs, parameters = message
                outputs = [to_jsonable(out) for out in model.predict(inputs, parameters)]
            else:
                outputs = _generate(model, generations, message)
        except BaseException as exc:
            wire.send(conn, ("raise", portable(exc)))
        else:
            grown = _peak_rss()
            if grown > peak:  # this call grew the process: its reply carries its own figures
                memory, pending = memory_figures(), {}
                measured, peak = time.monotonic(), grown
            else:
                memory, pending = pending, {}
            wire.send(conn, ("ok", outputs, memory))
        if time.monotonic() - measured >= MEASURE_EVERY:  # off the path, for the next reply
            pending = memory_figures()
            measured = time.monotonic()


def _generate(model: Any, generations: dict[int, Generation], message: tuple[Any, ...]) -> Any:
    """A generation's start (with its first step) or one step of several generations."""
    if message[0] == "start":
        _, gid, request = message
        generation: Generation = model.start(request)
        try:
            first = generation.session.step()  # the prompt's forward pass: no second trip
        except BaseException:
            generation.close()
            raise
        generations[gid] = generation
        return generation.prompt_tokens, generation.limit, generation.stop, first
    _, ids = message  # "step"
    step_many = getattr(model, "step_many", step_each)
    return step_many([generations[gid].session for gid in ids])


def _peak_rss() -> int:
    """The process's peak resident size so far (kB; a system call, no file to read)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
