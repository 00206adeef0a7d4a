"""The host: one ModelManager for the process, the front ends that serve it, one drain.

A front end (the HTTP server, app/http/server.py; a gRPC server would be another) serves the
host's manager until it is told to stop. The host starts the manager (waiting for the hot
models first where `server.preload` is `wait`), runs every front end, starts the other hot
loads once all of them listen, and handles the process's signals: SIGTERM or SIGINT stops
admitting requests at once, stops the front ends (which finish what is in flight), then
drains the manager once and unloads everything; a second SIGINT stops the front ends at
once; SIGHUP reloads models.yaml. A watchdog ends the process if the shutdown itself hangs.

Exit codes of `run`: 0 after a clean drain; 1 if a front end could not start; 3 if the drain
ended with work abandoned (admitted requests answered 503 shutting_down, or model threads
still running: a stuck load or predict).

The app's lifespan (app/main.py) uses a host that runs it; without one (the app driven by
its lifespan alone, as tests and the Ray replicas do) it starts and drains a host of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from registry.config.schema import Config
from registry.manager import ModelManager
from registry.units import format_bytes

log = logging.getLogger("app")
EXIT_OK = 0
EXIT_NOT_STARTED = 1
EXIT_ABANDONED = 3
WATCHDOG_GRACE = 10.0  # past the drain, a shutdown that still runs is ended by force


class FrontEnd(Protocol):
    """A server that answers requests with the host's manager."""

    @property
    def started(self) -> bool:
        """Whether it came to listen (False once `serve` returned: it could not start)."""
        ...

    async def serve(self, host: Host) -> None:
        """Serve until `stop`; call `host.listening(self)` once it accepts connections.

        Returns once what was in flight is answered (or its own grace time is up).
        """
        ...

    def stop(self, *, now: bool = False) -> None:
        """Stop accepting; finish what is in flight (`now`: do not wait for it)."""
        ...


class Host:
    """Owns the process's ModelManager: starts it, serves it through front ends, drains once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.manager: ModelManager | None = None
        self._front_ends: list[FrontEnd] = []
        self._listening: set[int] = set()
        self._signalled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, *, preload: bool = True) -> ModelManager:
        """Create and start the manager; with `preload`, start the hot loads now (else at
        `listening`). Hot models are waited for here where `server.preload` is `wait`."""
        config = self.config
        manager = ModelManager(config)
        self.manager = manager
        self._loop = asyncio.get_running_loop()
        hot = [name for name, spec in config.models.items() if spec.hot]
        wait = config.server.preload == "wait" and bool(hot)
        await manager.start(preload=wait or preload)
        if wait:
            log.info("waiting for hot models before serving: %s", ", ".join(hot))
            await manager.wait_hot()
        log.info(
            "serving %d model(s) from %s with a %s budget",
            len(config.models),
            config.path,
            format_bytes(config.server.memory_budget),
        )
        return manager

    def listening(self, front_end: FrontEnd) -> None:
        """A front end accepts connections: once all do, the hot models start loading (their
        imports, torch, would otherwise delay the first answer)."""
        self._listening.add(id(front_end))
        if self.manager is not None and self._listening >= {id(f) for f in self._front_ends}:
            self.manager.preload()

    def begin_drain(self) -> None:
        """Refuse new requests from now on; those admitted are served while the drain lasts."""
        if self.manager is not None:
            self.manager.begin_shutdown()

    async def stop(self) -> None:
        """Drain the manager (bounded by server.drain_timeout) and unload everything."""
        if self.manager is not None:
            await self.manager.shutdown()

    @property
    def abandoned(self) -> bool:
        """Whether the drain ended with work abandoned."""
        report = self.manager.report if self.manager is not None else {}
        return bool(report.get("abandoned") or report.get("abandoned_threads"))

    def run(
        self,
        front_ends: Sequence[FrontEnd],
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> int:
        """Serve through `front_ends` until a signal (or one of them ends); the exit code."""
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(self.serve(front_ends))

    async def serve(self, front_ends: Sequence[FrontEnd]) -> int:
        """`run`, on the running loop."""
        self._front_ends = list(front_ends)
        with self._signals():
            await self.start(preload=False)
            try:
                await self._serve_all()
            finally:
                self.begin_drain()
                await self.stop()
        if not all(f.started for f in self._front_ends):
            return EXIT_NOT_STARTED
        return EXIT_ABANDONED if self.abandoned else EXIT_OK

    async def _serve_all(self) -> None:
        tasks = [asyncio.ensure_future(f.serve(self)) for f in self._front_ends]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.begin_drain()  # one front end ended: the others stop too
            for front_end in self._front_ends:
                front_end.stop()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _on_signal(self, sig: signal.Signals) -> None:
        """SIGTERM/SIGINT: stop admitting at once, then stop the front ends (they drain)."""
        now = self._signalled and sig is signal.SIGINT
        if not self._signalled:
            self._signalled = True
            log.info("received %s: draining in-flight requests", sig.name)
            watchdog = self.config.server.drain_timeout + WATCHDOG_GRACE
            timer = threading.Timer(watchdog, _force_exit, args=(watchdog,))
            timer.daemon = True
            timer.start()
        self.begin_drain()
        for front_end in self._front_ends:
            front_end.stop(now=now)

    def _on_hangup(self) -> None:
        if self.manager is not None:
            self.manager.reload_soon()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Handle SIGTERM, SIGINT and SIGHUP on this loop (only where it runs in the main
        thread: elsewhere the embedding program owns the signals)."""
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
                handled.append(sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
            handled.append(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass  # not the main thread (or no such signal here)
        try:
            yield
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)


@contextlib.contextmanager
def reload_on_sighup(manager: ModelManager) -> Iterator[None]:
    """SIGHUP reloads models.yaml (only where the loop runs in the main thread)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, manager.reload_soon)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def _force_exit(seconds: float) -> None:
    log.error("shutdown still running %.0fs after the signal: exiting now", seconds)
    logging.shutdown()
    os._exit(EXIT_ABANDONED)
