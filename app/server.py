"""Run the app under uvicorn with a graceful, bounded shutdown on SIGTERM/SIGINT.

Exit codes: 0 after a clean drain; 1 if the server could not start; 3 if the drain ended
with work abandoned (admitted requests answered 503 shutting_down, or model threads still
running: a stuck load or predict). The process exits within drain_timeout plus a few seconds
however stuck a thread is: model threads are daemon threads, and a watchdog ends the
process if the shutdown itself hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from app.http_limits import limited_protocol
from app.main import create_app
from registry.config.schema import Config

log = logging.getLogger("app")
EXIT_ABANDONED = 3
HTTP_GRACE = 1.0  # uvicorn waits this much past the drain: the manager answers 503s first
WATCHDOG_GRACE = 10.0  # past the drain, a shutdown that still runs is ended by force


class Server(uvicorn.Server):
    """uvicorn, but a handled signal ends the process with 0 instead of being re-raised."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_signal: Callable[[], None],
        watchdog: float,
        on_listening: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._watchdog = watchdog
        self._on_listening = on_listening
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start up (the app's lifespan, then listen); then `on_listening`."""
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._on_listening()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve, remembering the loop so that signal handlers can reach it."""
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install our handlers; unlike uvicorn's, do not re-raise the signal afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop admitting requests at once, then let uvicorn drain connections."""
        if not self.should_exit:
            log.info("received %s: draining in-flight requests", signal.Signals(sig).name)
            timer = threading.Timer(self._watchdog, _force_exit, args=(self._watchdog,))
            timer.daemon = True
            timer.start()
        self._on_signal()
        super().handle_exit(sig, frame)


def _force_exit(seconds: float) -> None:
    log.error("shutdown still running %.0fs after the signal: exiting now", seconds)
    logging.shutdown()
    os._exit(EXIT_ABANDONED)


def run_server(config: Config, host: str, port: int, *, access_log: bool = True) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests finish; returns the exit code."""
    app = create_app(config)
    app.state.preload_when_listening = True

    def preload() -> None:  # on the loop, once the socket listens
        if app.state.manager is not None:
            app.state.manager.preload()

    def stop_admitting() -> None:  # runs in a signal handler: defer to the loop
        manager = app.state.manager
        if manager is not None and server.loop is not None:
            server.loop.call_soon_threadsafe(manager.begin_shutdown)

    settings = config.server
    http, http_options = limited_protocol(settings.max_header_size, settings.max_headers)
    server_config = uvicorn.Config(
        app,
        http=http,
        **http_options,
        host=host,
        port=port,
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=math.ceil(config.server.drain_timeout + HTTP_GRACE),
        lifespan="on",
    )
    drain = config.server.drain_timeout
    watchdog = drain + WATCHDOG_GRACE
    server = Server(server_config, stop_admitting, watchdog, on_listening=preload)
    server.run()
    if not server.started:
        return 1
    report = app.state.manager.report if app.state.manager is not None else {}
    if report.get("abandoned") or report.get("abandoned_threads"):
        return EXIT_ABANDONED
    return 0
