"""Against a real server process: the CLI (ls, load, unload, reload), GET /events as SSE
(resume, shutdown), and JSON log lines."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import served

from app.cli.client import device_text
from devkit.server import CLI, Process, environ, free_port

pytestmark = pytest.mark.slow
TOKEN = "cli-token"
CONFIG = """\
server: {memory_budget: 100MB, watch: false, idle_ttl: 1h}
models:
  big: {loader: fake, options: {size: 60MB, load_seconds: 0.6}}
  small: {loader: fake, device: auto, options: {size: 1MB}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    env = environ(MODEL_REGISTRY_ADMIN_TOKEN=TOKEN)
    with served(tmp_path_factory.mktemp("cli"), CONFIG, "--log-format", "json", env=env) as process:
        yield process


def cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    # coverage's own variables, so that the CLI is measured in its process too
    env.update({k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")})
    if token is not None:
        env["MODEL_REGISTRY_ADMIN_TOKEN"] = token
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_load_shows_progress_ends_with_its_time_and_ls_shows_it(server: Process) -> None:
    result = cli("load", "big", "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("loaded big (60.0 MB, load ")
    assert result.stdout.rstrip().endswith("in all)")
    assert "loading big" in result.stderr  # progress while the 0.6 s load runs

    listing = cli("ls", "--url", server.url, token=None)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    header = ["NAME", "STATE", "DEVICE", "SIZE", "IN-FLIGHT", "LAST-USED", "TTL-LEFT"]
    assert lines[0].split() == header
    big = next(line.split() for line in lines if line.startswith("big "))
    assert big[1:6] == ["loaded", "cpu", "60.0", "MB", "0"]
    assert big[-1] in ("1h00m", "59m")  # idle_ttl 1h, just used
    small = next(line.split() for line in lines if line.startswith("small "))
    assert small[1:3] == ["unloaded", "auto"]  # where models.yaml asks: not loaded yet
    assert small[-2:] == ["never", "-"]
    assert "budget 100.0 MB, used 60.0 MB (60%)" in listing.stdout

    unloaded = cli("unload", "big", "--url", server.url)
    assert unloaded.returncode == 0, unloaded.stderr
    assert unloaded.stdout.startswith("unloaded big (unloaded, freed 60.0 MB) in ")
    assert httpx.get(f"{server.url}/models/big").json()["state"] == "unloaded"

    reloaded = cli("reload", "--url", server.url)
    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stdout == "reloaded models.yaml: nothing changed\n"


@pytest.mark.parametrize(
    ("args", "token", "message"),
    [
        (
            ("load", "nosuch"),
            TOKEN,
            "model 'nosuch' is not in the registry; known models: big, small",
        ),
        (("unload", "big"), "wrong", "missing or wrong admin token"),
        (("reload",), None, "missing or wrong admin token"),
    ],
)
def test_errors_are_one_line_and_exit_1(server: Process, args, token, message) -> None:
    result = cli(*args, "--url", server.url, token=token)
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("model-registry: ")
    assert message in result.stderr


def test_ls_shows_where_device_auto_went(server: Process) -> None:
    """`ls` shows the device a load ran on next to the one models.yaml asks for: the fake
    holds plain bytes in RAM, so `device: auto` went to the CPU ("auto->cpu")."""
    assert httpx.post(f"{server.url}/models/small/predict", json={"inputs": "x"}).is_success
    listing = cli("ls", "--url", server.url, token=None)
    assert listing.returncode == 0, listing.stderr
    small = next(line.split() for line in listing.stdout.splitlines() if line.startswith("small"))
    assert small[1:3] == ["loaded", "auto->cpu"]
    unloaded = cli("unload", "small", "--url", server.url)  # as the other tests expect it
    assert unloaded.returncode == 0, unloaded.stderr


@pytest.mark.parametrize(
    ("configured", "resolved", "shown"),
    [
        ("auto", None, "auto"),
        ("auto", "cuda:0", "auto->cuda:0"),
        ("cuda", "cuda:0", "cuda:0"),
        ("cuda:1", "cuda:1", "cuda:1"),
        ("cuda", "cpu", "cuda->cpu"),
        (None, None, "-"),  # a server from before the device keys
    ],
)
def test_the_device_column(configured: str | None, resolved: str | None, shown: str) -> None:
    """One word per model: the device it ran on, and the entry's where that differs."""
    assert device_text(configured, resolved) == shown


def test_no_server_is_one_line_and_exit_1() -> None:
    result = cli("ls", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("model-registry: cannot reach the server at http://127.0.0.1:")
    assert len(result.stderr.splitlines()) == 1


def read_events(response: httpx.Response, count: int) -> list[dict[str, object]]:
    """The next `count` events of an open stream, with their SSE fields."""
    events: list[dict[str, object]] = []
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                events.append({**fields, "data": json.loads(fields["data"])})
                if len(events) == count:
                    return events
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value
    raise AssertionError(f"the stream ended after {events}")


def test_events_stream_and_resume_by_last_event_id(server: Process) -> None:
    start = httpx.get(f"{server.url}/models").json()["last_event_id"]
    timeout = httpx.Timeout(30.0)
    with httpx.stream("GET", f"{server.url}/events", timeout=timeout) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert httpx.post(f"{server.url}/models/small/predict", json={"inputs": "x"}).is_success
        loading, loaded = read_events(response, 2)
    assert loading["event"] == "loading" and loaded["event"] == "loaded"
    assert int(str(loading["id"])) == start + 1 and int(str(loaded["id"])) == start + 2
    assert loaded["data"]["model"] == "small" and loaded["data"]["bytes"] == 1_000_000

    headers = {"Last-Event-ID": str(start + 1)}
    with httpx.stream("GET", f"{server.url}/events", headers=headers, timeout=timeout) as again:
        (replayed,) = read_events(again, 1)
    assert replayed["id"] == loaded["id"] and replayed["data"] == loaded["data"]


def test_json_logs_carry_the_model_and_the_event(server: Process) -> None:
    assert httpx.post(f"{server.url}/models/small/predict", json={"inputs": "x"}).is_success
    lines = server.log.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records, server.log
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert not [r for r in records if "color_message" in r]  # uvicorn's ANSI copy stays out
    loaded = [r for r in records if r.get("event") == "loaded" and r.get("model") == "small"]
    assert loaded and loaded[0]["bytes"] == 1_000_000 and loaded[0]["logger"] == "registry.events"
    assert not [line for line in lines if line.strip() and not line.startswith("{")]


def test_an_open_event_stream_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    """Shutdown ends open /events streams, so the drain finishes and the process exits 0."""
    with served(tmp_path, "server: {drain_timeout: 60}\nmodels:\n  a: {loader: fake}\n") as process:
        with httpx.stream("GET", f"{process.url}/events", timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines) == "retry: 1000"
            code = process.stop(timeout=30)  # SIGTERM; at most half the drain timeout
            assert code == 0, process.log
            assert list(lines) == [""]  # the stream ended instead of waiting for the drain
        assert "shutdown complete" in process.log
