"""One registry replica on Ray Serve: the plain server's app, called in process.

Each replica builds the same FastAPI app as `model-registry serve` (so the same routes, JSON
and errors, and one ModelManager with the configured budget), runs its lifespan, and answers
the requests the gateway forwards by calling that app directly over ASGI, with no socket.
It reports the models it holds and its free budget to Ray's request router
(`record_routing_stats`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import MutableMapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI

from app.main import create_app
from app.views_json import model_json, readiness_json, registry_json
from registry.config.file import load_config
from registry.manager import ModelManager
from registry.slot import State


@dataclass
class Forwarded:
    """An HTTP request as the gateway forwards it (picklable)."""

    method: str
    path: str
    query: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


@dataclass
class Answer:
    """An HTTP response coming back from a replica (picklable)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    replica: str = ""
    pid: int = 0


async def call_asgi(app: FastAPI, request: Forwarded) -> Answer:
    """Run one request through an ASGI app in process and collect its response."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "root_path": "",
        "query_string": request.query,
        "headers": request.headers,
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 0),
    }
    sent = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            # The app reads past the body only to watch for the client hanging up. The
            # forwarded request has no connection of its own: Ray cancels this call if its
            # caller goes away, so there is no disconnect to report; wait until cancelled.
            await never.wait()
        sent = True
        return {"type": "http.request", "body": request.body, "more_body": False}

    status, headers, chunks = 500, [], []

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return Answer(status, headers, b"".join(chunks))


class RegistryReplica:
    """A Ray Serve deployment class (decorated in app/ray/gateway.py): one registry per replica."""

    async def __init__(self, config_path: str) -> None:  # type: ignore[misc]  # Ray allows it
        from ray import serve  # only inside a replica

        self.replica_id = serve.get_replica_context().replica_id.unique_id
        config = load_config(config_path)
        self.app = create_app(config)
        self._lifespan: AbstractAsyncContextManager[Any] = self.app.router.lifespan_context(
            self.app
        )
        await self._lifespan.__aenter__()

    @property
    def manager(self) -> ModelManager:
        """The replica's registry."""
        manager: ModelManager = self.app.state.manager
        return manager

    async def handle(self, request: Forwarded) -> Answer:
        """Answer one forwarded HTTP request with the plain server's app."""
        answer = await call_asgi(self.app, request)
        answer.replica, answer.pid = self.replica_id, os.getpid()
        return answer

    def stats(self) -> dict[str, Any]:
        """Budget, use, readiness and every model this replica has touched (loaded or tried).

        Models never touched here are left out: their entries are the same everywhere, and
        at 1,000 models the report stays proportional to what the replica actually holds.
        """
        view = self.manager.snapshot()
        touched = [m for m in view.models if m.state is not State.UNLOADED or m.load_count]
        report = registry_json(replace(view, models=()))
        del report["models"]
        readiness = self.manager.readiness()
        return {
            **report,
            "replica": self.replica_id,
            "pid": os.getpid(),
            "free_bytes": max(0, view.budget_bytes - view.used_bytes),
            "ready": readiness.ready,
            "readiness": readiness_json(readiness),
            "models": {m.name: model_json(m) for m in touched},
            "reported_at": time.time(),
        }

    async def record_routing_stats(self) -> dict[str, Any]:
        """Ray's hook: the controller polls it and hands the result to every router."""
        return self.stats()

    async def check_health(self) -> None:
        """Ray's health check: unhealthy once the registry is shutting down."""
        if self.manager.closing:
            raise RuntimeError("the registry is shutting down")

    async def __del__(self) -> None:
        """Ray's graceful shutdown: drain, unload, give memory back."""
        await self._lifespan.__aexit__(None, None, None)
