"""Scenario `cold`: the first request to cold langid minus a warm one vs. a fresh pipeline()."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.client import Http, fire
from bench.context import Context
from bench.progress import progress
from bench.row import Row
from bench.servers import BATCH, STORE, inproc, model, start_server, unload, write_config
from bench.stats import median

RELOADS = 3  # reloads after an unload, per server


def _warm_seconds(port: int, request: bytes, count: int) -> float:
    return median(fire(port, [request])[0][1] for _ in range(count))


def _server_rep(ctx: Context, config: Path, raw: dict[str, Any]) -> None:
    """One fresh server: the first request, warm ones, then reloads after admin unloads."""
    with start_server(config, "cold") as server:
        server.wait_ready()
        http = Http(server.port)
        request = ctx.text_request(server.port, "langid")
        ctx.quiet.wait([server.pid])
        (status, first), *_ = fire(server.port, [request])
        assert status == 200, f"cold request: {status}\n{server.tail()}"
        warm = _warm_seconds(server.port, request, 7)
        raw["server_first"].append(first)
        raw["server_warm"].append(warm)
        raw["server_cold"].append(first - warm)
        raw["server_load_seconds"].append(http.get("/models/langid")["load_seconds"])
        for _ in range(RELOADS):
            unload(http, "langid")
            (status, again), *_ = fire(server.port, [request])
            assert status == 200, f"reload request: {status}\n{server.tail()}"
            raw["server_repeat_cold"].append(again - _warm_seconds(server.port, request, 3))
        http.close()


def _report_rep(ctx: Context, rep: int, raw: dict[str, Any]) -> None:
    result = raw["baseline"][-1]
    progress(
        f"  cold load rep {rep + 1}/{ctx.reps}: server {raw['server_cold'][-1] * 1e3:.0f} ms "
        f"(first {raw['server_first'][-1] * 1e3:.0f} - warm {raw['server_warm'][-1] * 1e3:.1f}; "
        f"its own load_seconds {raw['server_load_seconds'][-1] * 1e3:.0f}), "
        f"pipeline() {result['construct_s'] * 1e3:.0f} ms (first call "
        f"{result['first_call_s'] * 1e3:.1f}, warm {result['warm_call_s'] * 1e3:.1f})"
    )


def _rows(raw: dict[str, Any]) -> list[Row]:
    baseline = raw["baseline"]
    base = median(b["construct_s"] for b in baseline)
    with_call = median(b["construct_s"] + b["first_call_s"] - b["warm_call_s"] for b in baseline)
    repeat_base = median(x for b in baseline for x in b["repeat_construct_s"])
    cold = median(raw["server_cold"]) * 1e3
    return [
        Row(
            "cold load: langid, first load in the process",
            cold,
            base * 1e3,
            "ms",
            "ratio",
            1.2,
            note=f"server-side load_seconds {median(raw['server_load_seconds']) * 1e3:.0f} ms",
        ),
        Row(
            "cold load: same, baseline + its first-call extra (info)",
            cold,
            with_call * 1e3,
            "ms",
            "ratio",
            None,
            note="baseline: pipeline() + (first call - warm call)",
        ),
        Row(
            "cold load: langid, reload after an unload",
            median(raw["server_repeat_cold"]) * 1e3,
            repeat_base * 1e3,
            "ms",
            "ratio",
            1.2,
        ),
    ]


def cold_load(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """First request to cold langid minus a warm one vs. pipeline() in a warm process."""
    models = {"digits": model("digits", hot=True), "langid": model("langid", batch=BATCH)}
    config = write_config(ctx.workdir, "cold", models)
    sentence = json.loads(ctx.inputs.text_bodies[0].read_text())["inputs"]
    job = {
        "mode": "cold",
        "warm": {"task": "image-classification", "dir": str(STORE / "digits-resnet")},
        "task": "text-classification",
        "dir": str(STORE / "langid-bert"),
        "input": sentence,
        "repeats": RELOADS,
    }
    keys = ("server_first", "server_warm", "server_cold", "server_load_seconds")
    raw: dict[str, Any] = {key: [] for key in keys}
    raw.update(server_repeat_cold=[], baseline=[], admin_api=True)
    for rep in range(ctx.reps):
        _server_rep(ctx, config, raw)
        ctx.quiet.wait()
        raw["baseline"].append(inproc(job))
        _report_rep(ctx, rep, raw)
    return _rows(raw), raw
