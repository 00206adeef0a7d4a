"""The real process at SIGTERM (issue 7 items 2 and 16): bounded exit, JSON 503s, exit code."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_server import ServerProcess

pytestmark = pytest.mark.slow
EXIT_ABANDONED = 3
BOUND = 15.0  # seconds past drain_timeout the process may take: a hang fails the test


def _post_in_thread(url: str, result: dict[str, httpx.Response]) -> threading.Thread:
    def post() -> None:
        result["r"] = httpx.post(url, json={"inputs": "x"}, timeout=120)

    worker = threading.Thread(target=post)
    worker.start()
    return worker


def _wait_entry(server: ServerProcess, name: str, key: str, value: object) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/models/{name}", timeout=5).json()[key] == value:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name}.{key} never became {value!r}:\n{server.log}")


def test_sigterm_exits_after_the_drain_although_a_predict_is_stuck(tmp_path: Path) -> None:
    """Issue 7 item 2: a model stuck in predict does not keep the process alive."""
    config = tmp_path / "models.yaml"
    config.write_text(
        "server: {drain_timeout: 1}\n"
        "models:\n  stuck: {loader: fake, options: {predict_seconds: 3600}}\n"
    )
    server = ServerProcess(config)
    try:
        server.wait_live()
        result: dict[str, httpx.Response] = {}
        worker = _post_in_thread(f"{server.url}/models/stuck/predict", result)
        _wait_entry(server, "stuck", "in_flight", 1)
        os.kill(server.process.pid, signal.SIGTERM)
        code = server.process.wait(timeout=1 + BOUND)
        worker.join(timeout=30)
        assert code == EXIT_ABANDONED, server.log
        assert result["r"].status_code == 503
        assert result["r"].json()["error"]["type"] == "shutting_down"
        assert "abandoned 1 after the 1s drain timeout" in server.log
    finally:
        server.close()


def test_a_request_waiting_on_a_long_load_at_sigterm_gets_a_json_503(tmp_path: Path) -> None:
    """Issue 7 item 16: JSON 503 shutting_down with Retry-After, never a plain-text 500."""
    config = tmp_path / "models.yaml"
    config.write_text(
        "server: {drain_timeout: 2}\nmodels:\n  slow: {loader: fake, options: {load_seconds: 60}}\n"
    )
    server = ServerProcess(config)
    try:
        server.wait_live()
        result: dict[str, httpx.Response] = {}
        worker = _post_in_thread(f"{server.url}/models/slow/predict", result)
        _wait_entry(server, "slow", "queued", 1)
        os.kill(server.process.pid, signal.SIGTERM)
        code = server.process.wait(timeout=2 + BOUND)
        worker.join(timeout=30)
        response = result["r"]
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["type"] == "shutting_down"
        assert int(response.headers["retry-after"]) >= 1
        assert code == EXIT_ABANDONED
        assert "Traceback" not in server.log
    finally:
        server.close()
