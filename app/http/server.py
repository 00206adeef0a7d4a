"""The HTTP front end: the app under uvicorn, served by the host (app/host.py).

The host owns the manager and the process's signals; this module only serves HTTP. uvicorn
runs the app's lifespan (which uses the host's manager), listens, tells the host (which then
starts the hot loads), and on `stop` closes its sockets and waits for the connections in
flight, a little past the drain, so that the manager answers 503s first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Callable, Iterator

import uvicorn

from app.host import Host
from app.http.header_limits import limited_protocol
from app.main import create_app
from registry.config.schema import Config

log = logging.getLogger("app")
HTTP_GRACE = 1.0  # uvicorn waits this much past the drain: the manager answers 503s first


class _Uvicorn(uvicorn.Server):
    """uvicorn, leaving the signals to the host, and saying when it listens."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start up (the app's lifespan, then listen); then `on_listening`."""
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self.on_listening()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """No handlers of its own: the host handles the signals and calls `stop`."""
        yield


class HTTPFrontEnd:
    """The app, served over HTTP by uvicorn: a front end of the host."""

    def __init__(self, config: Config, host: str, port: int, *, access_log: bool = True) -> None:
        self.app = create_app(config)
        settings = config.server
        http, http_options = limited_protocol(settings.max_header_size, settings.max_headers)
        self.uvicorn_config = uvicorn.Config(
            self.app,
            http=http,
            **http_options,
            host=host,
            port=port,
            log_config=None,
            access_log=access_log,
            timeout_graceful_shutdown=math.ceil(settings.drain_timeout + HTTP_GRACE),
            lifespan="on",
        )
        self._server = _Uvicorn(self.uvicorn_config, on_listening=lambda: None)

    @property
    def started(self) -> bool:
        """Whether uvicorn came to listen."""
        return self._server.started

    async def serve(self, host: Host) -> None:
        """Serve the app with `host`'s manager until `stop`."""
        self.app.state.host = host
        self._server.on_listening = lambda: host.listening(self)
        try:
            await self._server.serve()
        except SystemExit:  # uvicorn could not start (the port is taken, say); it logged why
            log.error("the HTTP server could not start")

    def stop(self, *, now: bool = False) -> None:
        """Stop accepting; wait for the connections in flight (`now`: do not)."""
        self._server.should_exit = True
        if now:
            self._server.force_exit = True

    def loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        """The event loop uvicorn would run (uvloop where installed)."""
        get = getattr(self.uvicorn_config, "get_loop_factory", None)
        if get is None:  # uvicorn before 0.36 sets the policy instead
            self.uvicorn_config.setup_event_loop()
            return None
        factory: Callable[[], asyncio.AbstractEventLoop] | None = get()
        return factory


def run_server(config: Config, host: str, port: int, *, access_log: bool = True) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests finish; returns the exit code."""
    front_end = HTTPFrontEnd(config, host, port, access_log=access_log)
    return Host(config).run([front_end], loop_factory=front_end.loop_factory())
