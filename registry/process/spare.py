"""The spare worker: one worker process started ahead, idle, waiting for its model.

- A process model's load takes the spare, so it pays no process start (the fork from the
  forkserver, unpickling the process, the interpreter's start-up): only its own load. The
  next spare is started once that load has ended (not during it: on a small machine the
  start would compete with the load for the CPU), by the keeper's thread.
- Started only once some model runs in a worker: `enable()` is called when the config at
  startup has process models, and by every process model's load; never otherwise.
- While it waits it practises (registry/process/preload.py: tiny models built and run once), so the
  load it takes does not pay the first-call costs of transformers and torch.
- Its memory: it holds no model, so the budget counts no bytes for it; its own fixed memory
  (a forked interpreter, ~16 MiB private after its practice) is real and shown in GET
  /models (`spare_worker`), measured by the spare itself once it is ready.
- A spare that dies while idle is noticed at once (the keeper waits on its sentinel), reaped,
  logged and replaced (after a pause growing up to MAX_PAUSE if spares keep dying); one
  found dead when a load takes it is not used: the load starts a worker of its own.
- Shutdown: `stop()` ends it and the keeper's thread (workers.stop_all, before the last
  workers are swept). Like every worker it gets SIGKILL when the forkserver exits
  (PR_SET_PDEATHSIG) and exits when its pipe closes, so a SIGKILLed server leaves no spare.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Literal

from registry.process import wire
from registry.process.forkserver import Worker, describe_exit

log = logging.getLogger("registry")

READY_TIMEOUT = 60.0  # seconds a new spare may take to start before it is given up
MAX_PAUSE = 30.0  # seconds between two starts when spares keep dying at once


@dataclass
class Spare:
    """One started worker with no model yet, and the server's end of its pipe."""

    worker: Worker
    conn: Connection
    memory: dict[str, int] = field(default_factory=dict)  # its own figures, once ready


@dataclass(frozen=True, slots=True)
class SpareState:
    """What GET /models shows of the spare."""

    pid: int | None
    state: Literal["starting", "ready"]
    private_bytes: int | None  # its private dirty memory, once it is ready


Start = Callable[[], tuple[Worker, Connection]]


class SpareKeeper:
    """Keeps one spare worker ready while enabled; hands it to a load with `take()`."""

    def __init__(self, start: Start) -> None:
        self._start = start
        self._changed = threading.Condition()
        self._spare: Spare | None = None  # ready to be taken
        self._starting: Worker | None = None  # started, not ready yet
        self._wanted = False  # a spare should be kept
        self._refill = False  # start the next one (a load took the last and has ended)
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self.deaths = 0  # spares that died while idle
        self.stops = 0  # stop() calls so far (a late enable(since=...) after one is ignored)

    # ------------------------------------------------------------------ the server's side

    def enable(self, since: int | None = None) -> None:
        """Keep a spare from now on (starts one unless there is one); with `since` (a
        reading of `stops`), only if no stop() came after that reading (a shutdown)."""
        with self._changed:
            if self._wanted or (since is not None and since != self.stops):
                return
            self._wanted = self._refill = True
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(target=self._keep, name="spare-worker", daemon=True)
            self._thread.start()

    def take(self) -> Spare | None:
        """The ready spare, if there is one and it is alive (then the caller owns it)."""
        with self._changed:
            spare, self._spare = self._spare, None
            self._changed.notify_all()
        if spare is None:
            return None
        self._poke()  # the keeper stops watching it
        if spare.worker.process.is_alive():
            spare.worker.spare = False  # a model's worker from now on
            return spare
        self._ended(spare, "was found dead when a load took it")
        return None

    def discard(self, spare: Spare, what: str) -> None:
        """A spare taken by a load turned out dead: reap it, log it."""
        self._ended(spare, what)

    def refill(self) -> None:
        """A load that took (or could not find) the spare has ended: start the next one."""
        with self._changed:
            if not self._wanted or self._spare is not None or self._starting is not None:
                return
            self._refill = True
        self._poke()

    def state(self) -> SpareState | None:
        """The spare as GET /models shows it; None when there is none."""
        with self._changed:
            spare, starting, refill = self._spare, self._starting, self._refill and self._wanted
        if spare is not None:
            return SpareState(spare.worker.pid, "ready", spare.memory.get("private"))
        if starting is not None or refill:
            return SpareState(None if starting is None else starting.pid, "starting", None)
        return None

    def settle(self, timeout: float) -> SpareState | None:
        """Wait until no spare is being started (tests: the process tree is stable)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._wanted and (self._refill or self._starting is not None):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        return self.state()

    def stop(self) -> None:
        """Keep no spare: end the one there is and the keeper's thread (shutdown)."""
        with self._changed:
            self.stops += 1
            if not self._wanted:
                return
            self._wanted = self._refill = False
            thread, self._thread = self._thread, None
            spare, self._spare = self._spare, None
            self._changed.notify_all()
        self._poke()
        if thread is not None:
            thread.join(READY_TIMEOUT)
        if spare is not None:
            self._end(spare)
        with self._changed:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------------ the keeper's thread

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _keep(self) -> None:
        pause = 0.0
        while True:
            with self._changed:
                if not self._wanted:
                    return
                spare, refill = self._spare, self._refill
            if spare is None and refill:
                if pause:
                    self._wait([], pause)
                spare = self._new()
                pause = 0.0 if spare is not None else min(MAX_PAUSE, max(1.0, pause * 2))
                continue
            sentinel = spare.worker.sentinel() if spare is not None else None
            try:
                self._wait([] if sentinel is None else [sentinel], None)
            finally:
                if sentinel is not None:
                    os.close(sentinel)
            if spare is None:
                continue
            with self._changed:
                died = self._spare is spare and not spare.worker.process.is_alive()
                if died:
                    self._spare, self._refill = None, True
                    self._changed.notify_all()
            if died:
                self._ended(spare, "died while idle")
                pause = max(1.0, pause)  # a spare that dies as soon as it starts: not a loop

    def _wait(self, fds: list[int], timeout: float | None) -> None:
        """Until one of `fds` is readable, or a poke (drained), or `timeout`."""
        ready = wait([self._wake_r, *fds], timeout)
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)

    def _new(self) -> Spare | None:
        """Start a spare and wait for its "ready"; None if it failed (logged)."""
        try:
            worker, conn = self._start()
        except Exception:
            log.exception("could not start a spare worker")
            with self._changed:
                self._refill = False
                self._changed.notify_all()
            return None
        with self._changed:
            self._starting = worker
        spare = Spare(worker, conn)
        reply = self._ready(conn)
        with self._changed:
            self._starting = None
            keep = self._wanted and reply is not None and reply[0] == "ready"
            if keep and reply is not None:
                memory = reply[1]
                spare.memory = dict(memory) if isinstance(memory, dict) else {}
                self._spare = spare
            self._refill = False
            self._changed.notify_all()
        if not keep:
            if self._wanted:
                self._ended(spare, "did not start")
            else:
                self._end(spare)
            return None
        return spare

    def _ready(self, conn: Connection) -> tuple[object, ...] | None:
        """The new spare's first message; None if it died, took too long, or stop() came."""
        deadline = time.monotonic() + READY_TIMEOUT
        while self._wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready = wait([conn, self._wake_r], left)
            if conn in ready:
                try:
                    reply: tuple[object, ...] = wire.recv(conn)
                except (EOFError, OSError):
                    return None
                return reply
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
        return None

    def _ended(self, spare: Spare, what: str) -> None:
        code = self._end(spare)
        self.deaths += 1
        log.warning(
            "the spare worker (pid %s) %s: %s; %s",
            spare.worker.pid,
            what,
            describe_exit(code),
            "another is started" if self._wanted else "none is kept",
        )

    @staticmethod
    def _end(spare: Spare) -> int | None:
        """Close its pipe (an idle spare exits on EOF) and reap it."""
        with contextlib.suppress(OSError):
            spare.conn.close()
        spare.worker.wait(0.5)
        return spare.worker.stop(grace=0.5)
