"""Scenario `observe`: what watching the server costs its requests.

A server with 100 fake models serves one of them sequentially, first with nobody watching
(the baseline), then while 20 clients hold GET /events open without reading it (slow
consumers), a scraper reads GET /metrics every 0.1 s and a dashboard polls GET /models every
second, and another model is loaded and unloaded in a loop so that events flow. The ratio of
the p50 latencies is the cost; the target is that observers do not slow requests by more
than 20%. The scrape time of /metrics against /models (same 100 models) is shown for
information.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from bench.client import Http
from bench.context import Context
from bench.progress import progress
from bench.row import Row
from bench.servers import start_server, write_config
from bench.stats import median, percentile

SUBSCRIBERS = 20


def _models() -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {
        "echo": {"loader": "fake", "hot": True, "options": {"size": "1MB"}},
        "churn": {"loader": "fake", "options": {"size": "10MB"}},
    }
    for i in range(98):
        models[f"m{i:03d}"] = {"loader": "fake", "options": {"size": "100kB"}}
    return models


def _latencies(port: int, count: int) -> list[float]:
    http = Http(port)
    out = []
    try:
        for i in range(count):
            started = time.perf_counter()
            status, _ = http.predict_text("echo", f"text {i}")
            out.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"predict answered {status}")
    finally:
        http.close()
    return out


def _get_seconds(port: int, path: str, count: int) -> float:
    http = Http(port)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            status, _ = http.request("GET", path)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
            times.append(time.perf_counter() - started)
    finally:
        http.close()
    return median(times)


class Observers:
    """Slow /events readers, a /metrics scraper, a /models poller and a load/unload loop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.scrapes = 0

    def __enter__(self) -> Observers:
        for _ in range(SUBSCRIBERS):  # they never read: the slowest possible consumers
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
            self.sockets.append(sock)
        for target in (self._scrape, self._poll, self._churn):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _every(self, seconds: float, action: Any) -> None:
        http = Http(self.port)
        try:
            while not self.stop.is_set():
                action(http)
                self.stop.wait(seconds)
        finally:
            http.close()

    def _scrape(self) -> None:
        def scrape(http: Http) -> None:
            http.request("GET", "/metrics")
            self.scrapes += 1

        self._every(0.1, scrape)

    def _poll(self) -> None:
        self._every(1.0, lambda http: http.get("/models"))

    def _churn(self) -> None:
        def churn(http: Http) -> None:
            http.admin("churn", "load")
            http.admin("churn", "unload")

        self._every(0.05, churn)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        for sock in self.sockets:
            sock.close()


def observe(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """p50 of sequential requests with observers vs without; /metrics vs /models time."""
    count = 200 if ctx.quick else 1000
    config = write_config(ctx.workdir, "observe", _models(), watch=False)
    raw: dict[str, Any] = {}
    with start_server(config, "observe") as server:
        server.wait_ready()
        _latencies(server.port, 50)  # warm-up
        p50s: dict[str, list[float]] = {"quiet": [], "observed": []}
        for rep in range(ctx.reps):
            progress(f"  observe: rep {rep + 1}/{ctx.reps}, {count} requests each way")
            quiet = ctx.quiet.measure(
                "observe quiet", [server.pid], lambda: {"lat": _latencies(server.port, count)}
            )
            p50s["quiet"].append(percentile(quiet["lat"], 50))
            with Observers(server.port) as observers:
                watched = _latencies(server.port, count)
            p50s["observed"].append(percentile(watched, 50))
            raw.setdefault("scrapes", []).append(observers.scrapes)
        raw["p50_ms"] = {k: [v * 1e3 for v in vs] for k, vs in p50s.items()}
        metrics_s = _get_seconds(server.port, "/metrics", 50)
        models_s = _get_seconds(server.port, "/models", 50)
        raw.update(metrics_ms=metrics_s * 1e3, models_ms=models_s * 1e3)
    rows = [
        Row(
            f"observe: p50 with {SUBSCRIBERS} stalled /events streams, /metrics every 0.1 s, "
            "load/unload churn",
            median(p50s["observed"]) * 1e3,
            median(p50s["quiet"]) * 1e3,
            "ms",
            "ratio",
            1.2,
        ),
        Row(
            "observe: GET /metrics vs GET /models, 100 models (info)",
            metrics_s * 1e3,
            models_s * 1e3,
            "ms",
            "ratio",
            None,
        ),
    ]
    return rows, raw
