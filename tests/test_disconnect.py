"""Over HTTP: clients that go away, and the 504 of a stuck model."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import wait_until

from app.main import create_app
from registry.loaders import fake

pytestmark = pytest.mark.anyio


async def _post(app: Any, path: str, body: bytes, gone: asyncio.Event, sent: list[Any]) -> None:
    """One request through the real ASGI app; its client disconnects when `gone` is set."""
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)


async def test_clients_that_disconnect_while_their_model_loads_are_dropped(write_config) -> None:
    """Gone clients leave the queue at once and are never run."""
    config = write_config("models:\n  m: {loader: fake, options: {gate: gm}}\n")
    app = create_app(config)
    async with app.router.lifespan_context(app):
        manager = app.state.manager
        gone = asyncio.Event()
        sent: list[Any] = []
        body = json.dumps({"inputs": "hello"}).encode()
        clients = [
            asyncio.create_task(_post(app, "/models/m/predict", body, gone, sent))
            for _ in range(10)
        ]
        await wait_until(lambda: manager.describe("m").queued == 10, "10 clients wait")
        gone.set()
        await wait_until(lambda: manager.describe("m").queued == 0, "the gone clients leave")
        assert manager.describe("m").state == "loading"
        await asyncio.wait_for(asyncio.gather(*clients), 10)
        fake.open_gate("gm")
        await wait_until(lambda: manager.describe("m").state == "loaded", "the load ends")
        assert manager.describe("m").served == 0
        fake.reset()


def test_a_stuck_model_answers_504_inference_timeout(write_config) -> None:
    """`predict_timeout` maps to a JSON 504 naming the setting."""
    config = write_config(
        "models:\n  m: {loader: fake, predict_timeout: 0.1, options: {predict_hang: true}}\n"
    )
    with TestClient(create_app(config)) as client:
        response = client.post("/models/m/predict", json={"inputs": "x"})
        assert response.status_code == 504
        error = response.json()["error"]
        assert error["type"] == "inference_timeout"
        assert "predict_timeout" in error["message"]
        models = client.get("/models").json()
        assert models["budget_state"] == "ok"
        assert "abandoned_threads" in models
        metrics = client.get("/metrics").text
        assert "model_registry_abandoned_threads" in metrics
