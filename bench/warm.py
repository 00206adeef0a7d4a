"""Scenario `warm`: p50/p99 over HTTP (wrk, 1 connection) vs. the pipeline called in-process."""

from __future__ import annotations

from typing import Any

from bench.context import MODEL_KIND, Context
from bench.progress import progress
from bench.rounds import wrk_problems, wrk_rounds
from bench.row import Row
from bench.servers import BATCH, model, ready_server, write_config

WARM_MODELS = ("digits", "langid")


def _rows(name: str, raw: dict[str, Any]) -> list[Row]:
    base = raw["inproc"]
    lat = raw["http"]["latency_us"]
    what = "image upload" if MODEL_KIND[name] == "image" else "JSON text"
    progress(
        f"  {name}: HTTP p50 {lat['p50'] / 1e3:.2f} ms p99 {lat['p99'] / 1e3:.2f} ms; "
        f"in-process p50 {base['p50_ms']:.2f} ms p99 {base['p99_ms']:.2f} ms"
    )
    note = wrk_problems(raw["http"])
    return [
        Row(
            f"warm p50: {name} ({what})",
            lat["p50"] / 1e3,
            base["p50_ms"],
            "ms",
            "delta",
            2.0,
            note=note,
        ),
        Row(f"warm p99: {name} ({what})", lat["p99"] / 1e3, base["p99_ms"], "ms", "delta", None),
    ]


def warm_latency(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """p50/p99 over HTTP (wrk, 1 keep-alive connection) vs. the pipeline called in-process."""
    models = {name: model(name, hot=True, batch=BATCH) for name in WARM_MODELS}
    raw: dict[str, Any] = {}
    with ready_server(write_config(ctx.workdir, "warm", models), "warm") as server:
        kinds = {name: MODEL_KIND[name] for name in WARM_MODELS}
        for name, result in wrk_rounds(ctx, server, kinds, 1).items():
            raw[name] = {"http": result}
    rows: list[Row] = []
    for name in WARM_MODELS:
        raw[name]["inproc"] = ctx.baseline_loop(name)
        rows += _rows(name, raw[name])
    return rows, raw
