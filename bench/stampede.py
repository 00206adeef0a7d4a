"""Scenario `stampede`: 64 simultaneous first requests to cold langid, one load, vs. one request."""

from __future__ import annotations

from typing import Any

from bench.client import Http, fire
from bench.context import Context
from bench.progress import progress
from bench.row import Row
from bench.servers import BATCH, model, start_server, unload, write_config
from bench.stats import median
from devkit.server import Process

COUNTS = (1, 64)


def _burst(ctx: Context, server: Process, http: Http, count: int, raw: dict[str, Any]) -> str:
    """`count` first requests to cold langid at once; records them; a progress summary."""
    before = http.get("/models/langid")["load_count"]
    requests = [ctx.text_request(server.port, "langid", i % 16) for i in range(count)]
    ctx.quiet.wait([server.pid])
    results = fire(server.port, requests)
    loads = http.get("/models/langid")["load_count"] - before
    statuses = sorted({status for status, _ in results})
    slowest = max(seconds for _, seconds in results)
    if count == 1:
        raw["single_s"].append(slowest)
    else:
        raw["slowest_s"].append(slowest)
        raw["loads"].append(loads)
        raw["statuses"].append(statuses)
        # The same 64 requests to the now warm model: what serving them costs.
        ctx.quiet.wait([server.pid])
        warm = fire(server.port, requests)
        raw["slowest_warm_s"].append(max(seconds for _, seconds in warm))
    return (
        f"{count} request(s), slowest {slowest * 1e3:.0f} ms, {loads} load(s), statuses {statuses}"
    )


def _rows(raw: dict[str, Any]) -> list[Row]:
    all_ok = all(statuses == [200] for statuses in raw["statuses"])
    slowest = median(raw["slowest_s"]) * 1e3
    return [
        Row(
            "stampede: slowest of 64 first requests vs 1",
            slowest,
            median(raw["single_s"]) * 1e3,
            "ms",
            "ratio",
            1.3,
            note="" if all_ok else f"statuses {raw['statuses']}",
        ),
        Row(
            "stampede: slowest of 64 cold vs 64 warm (info)",
            slowest,
            median(raw["slowest_warm_s"]) * 1e3,
            "ms",
            "delta",
            None,
            note="the delta is what the cold start adds to a burst of 64",
        ),
        Row(
            "stampede: loads per 64 first requests",
            max(raw["loads"]),
            1,
            "loads",
            "ratio",
            1.0,
            note=f"loads per stampede: {raw['loads']}",
        ),
    ]


def stampede(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """64 simultaneous first requests to cold langid: 1 load, slowest vs. a single request."""
    models = {"digits": model("digits", hot=True), "langid": model("langid", batch=BATCH)}
    config = write_config(ctx.workdir, "stampede", models)
    keys = ("single_s", "slowest_s", "slowest_warm_s", "loads", "statuses")
    raw: dict[str, Any] = {key: [] for key in keys}
    raw["cold_by"] = "admin unload"
    with start_server(config, "stampede") as server:
        server.wait_ready()
        http = Http(server.port)
        # Pay langid's one-time imports, so that every measured load is a reload.
        http.predict_text("langid", "warm up")
        for rep in range(ctx.reps):
            for count in COUNTS:
                unload(http, "langid")
                summary = _burst(ctx, server, http, count, raw)
                progress(f"  stampede rep {rep + 1}/{ctx.reps}: {summary}")
    return _rows(raw), raw
