"""The real process at SIGTERM: bounded exit, JSON 503s, exit code."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import served, wait_for

from devkit.server import Process

pytestmark = pytest.mark.slow
EXIT_ABANDONED = 3
BOUND = 15.0  # seconds past drain_timeout the process may take: a hang fails the test


def sigterm_while_waited_on(
    tmp_path: Path, drain: int, name: str, options: str, key: str
) -> tuple[Process, int, httpx.Response]:
    """Serve one fake model `name`, post to it from a thread, SIGTERM once its entry's `key`
    is 1; the stopped server, its exit code (within the drain timeout + BOUND) and the answer.
    """
    text = (
        f"server: {{drain_timeout: {drain}}}\n"
        f"models:\n  {name}: {{loader: fake, options: {{{options}}}}}\n"
    )
    result: dict[str, httpx.Response] = {}
    with served(tmp_path, text) as server:

        def post() -> None:
            url = f"{server.url}/models/{name}/predict"
            result["r"] = httpx.post(url, json={"inputs": "x"}, timeout=120)

        def entry() -> Any:
            return httpx.get(f"{server.url}/models/{name}", timeout=5).json()

        worker = threading.Thread(target=post)
        worker.start()
        wait_for(lambda: entry()[key] == 1, f"{name}.{key} is 1")
        server.send(signal.SIGTERM)
        code = server.wait(timeout=drain + BOUND)
        worker.join(timeout=30)
    return server, code, result["r"]


def test_sigterm_exits_after_the_drain_although_a_predict_is_stuck(tmp_path: Path) -> None:
    """A model stuck in predict does not keep the process alive."""
    server, code, response = sigterm_while_waited_on(
        tmp_path, 1, "stuck", "predict_seconds: 3600", "in_flight"
    )
    assert code == EXIT_ABANDONED, server.log
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "shutting_down"
    assert "abandoned 1 after the 1s drain timeout" in server.log


def test_a_request_waiting_on_a_long_load_at_sigterm_gets_a_json_503(tmp_path: Path) -> None:
    """JSON 503 shutting_down with Retry-After, never a plain-text 500."""
    server, code, response = sigterm_while_waited_on(
        tmp_path, 2, "slow", "load_seconds: 60", "queued"
    )
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "shutting_down"
    assert int(response.headers["retry-after"]) >= 1
    assert code == EXIT_ABANDONED
    assert "Traceback" not in server.log
