"""Run the app under uvicorn with a graceful, exit-code-0 shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from app.http_limits import limited_protocol
from app.main import create_app
from registry.config import Config

log = logging.getLogger("app")


class Server(uvicorn.Server):
    """uvicorn, but a handled signal ends the process with 0 instead of being re-raised."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self.loop: asyncio.AbstractEventLoop | None = None

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
        self._on_signal()
        super().handle_exit(sig, frame)


def run_server(config: Config, host: str, port: int, *, access_log: bool = True) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests finish; returns the exit code."""
    app = create_app(config)

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
        timeout_graceful_shutdown=max(1, round(config.server.drain_timeout)),
        lifespan="on",
    )
    server = Server(server_config, on_signal=stop_admitting)
    server.run()
    return 0 if server.started else 1
