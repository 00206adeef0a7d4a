"""The app factory: a FastAPI app with every protocol's routes, serving a host's manager.

The lifespan uses the host that serves the app (app/host.py, set on `app.state.host` by the
front end); without one (the app driven by its lifespan alone: tests, the Ray replicas) it
starts a host of its own and drains it when the lifespan ends.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from app import errors
from app.host import Host, reload_on_sighup
from app.http import admin, routes
from app.http.body_limit import BodyLimit
from app.http.fast_path import PredictFastPath
from app.openai import embeddings, generation
from app.operations import events, metrics
from app.operations.dashboard import router as dashboard_router
from app.v2 import routes as v2_routes
from registry.config.file import load_config
from registry.config.schema import Config
from registry.manager import ModelManager

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
        host: Host | None = app.state.host
        if host is not None:  # a host serves the app: it started the manager and drains it
            app.state.manager = host.manager
            yield
            return
        host = Host(initial)
        manager = app.state.manager = await host.start()
        with reload_on_sighup(manager):
            try:
                yield
            finally:
                await host.stop()

    app = FastAPI(
        title="model-registry-server",
        summary="Many models in one process: loaded on demand, evicted LRU under a byte budget.",
        version="0.1.0",
        lifespan=lifespan,
        **_NO_TELEMETRY,
    )
    app.state.manager = None
    app.state.host = None  # a front end sets the host that serves the app (app/host.py)
    app.add_middleware(PredictFastPath)  # inside the upload limit: added first
    app.add_middleware(BodyLimit, limit=lambda: _upload_limit(app, initial))
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(admin.router)
    app.include_router(metrics.router)
    app.include_router(events.router)
    app.include_router(dashboard_router)
    app.include_router(v2_routes.router)
    app.include_router(generation.router)  # /v1/models, chat and completions
    app.include_router(embeddings.router)
    return app


def _upload_limit(app: FastAPI, fallback: Config) -> int:
    manager: ModelManager | None = app.state.manager
    config = manager.config if manager is not None else fallback
    return config.server.max_upload_size
