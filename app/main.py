"""The app factory: a FastAPI app whose lifespan owns the ModelManager."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from app import admin, errors, events, metrics, openai_api, openai_generation, routes, v2
from app.dashboard import router as dashboard_router
from app.fast_path import PredictFastPath
from app.limits import BodyLimit
from registry.config.file import load_config
from registry.config.schema import Config
from registry.manager import ModelManager
from registry.units import format_bytes

log = logging.getLogger("app")
# FastAPI's native OpenTelemetry (0.16x) looks up the global providers on every request, even
# when none is configured; the registry exports no traces, so it is off (older FastAPIs
# have no such option).
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(config: Config | str | Path) -> FastAPI:
    """Build the app for a parsed config (or the path of a models.yaml)."""
    if not isinstance(config, Config):
        config = load_config(config)
    initial = config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager = ModelManager(initial)
        app.state.manager = manager
        hot = [name for name, spec in initial.models.items() if spec.hot]
        wait = initial.server.preload == "wait" and bool(hot)
        # Served by app/server.py, hot models start loading once the socket listens (it
        # calls manager.preload()): their imports (torch) would delay the first answer.
        await manager.start(preload=wait or not app.state.preload_when_listening)
        if wait:
            log.info("waiting for hot models before serving: %s", ", ".join(hot))
            await manager.wait_hot()
        log.info(
            "serving %d model(s) from %s with a %s budget",
            len(initial.models),
            initial.path,
            format_bytes(initial.server.memory_budget),
        )
        with _reload_on_sighup(manager):
            try:
                yield
            finally:
                await manager.shutdown()

    app = FastAPI(
        title="model-registry-server",
        summary="Many models in one process: loaded on demand, evicted LRU under a byte budget.",
        version="0.1.0",
        lifespan=lifespan,
        **_NO_TELEMETRY,
    )
    app.state.manager = None
    app.state.preload_when_listening = False  # app/server.py sets it: it calls preload()
    app.add_middleware(PredictFastPath)  # inside the upload limit: added first
    app.add_middleware(BodyLimit, limit=lambda: _upload_limit(app, initial))
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(admin.router)
    app.include_router(metrics.router)
    app.include_router(events.router)
    app.include_router(dashboard_router)
    app.include_router(v2.router)
    app.include_router(openai_generation.router)  # /v1/models, chat and completions
    app.include_router(openai_api.router)
    return app


@contextmanager
def _reload_on_sighup(manager: ModelManager) -> Iterator[None]:
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


def _upload_limit(app: FastAPI, fallback: Config) -> int:
    manager: ModelManager | None = app.state.manager
    config = manager.config if manager is not None else fallback
    return config.server.max_upload_size
