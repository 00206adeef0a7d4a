"""Scenario `throughput`: 16 clients (wrk -c16), batching on and off, vs. the sequential pipeline.

A second server with torch_threads = every core (docs/behaviour.md: for a compute-bound model) runs
against an in-process baseline with as many threads; langid rides along to show what the
event loop loses to torch's threads, and a few langid reloads show the first-inference cost.
"""

from __future__ import annotations

import os
from typing import Any

from bench.client import Http, fire
from bench.context import MODEL_KIND, Context
from bench.rounds import wrk_problems, wrk_rounds
from bench.row import Row
from bench.servers import BATCH, model, ready_server, unload, write_config
from bench.stats import median
from devkit.server import Process

# Batching tuned to the 16 clients: a batch leaves as soon as every client has a request in.
TUNED = {"max_size": 16, "max_wait_ms": 5}
# name suffix -> (batch spec, target); the tuned variant is for comparison only: the batcher
# adapts its target size to recent batches, so max_size 16 should not matter any more.
VARIANTS: dict[str, tuple[dict[str, Any] | None, float | None]] = {
    "": (BATCH, 2.0),
    "-tuned": (TUNED, None),
    "-nobatch": (None, None),
}
THROUGHPUT_MODELS = {
    "digits": ("", "-tuned", "-nobatch"),
    "langid": ("", "-tuned", "-nobatch"),
    "minilm": ("", "-nobatch"),
}
ALL_CORES = os.cpu_count() or 1
ALL_CORES_MODELS = ("minilm", "langid")
RELOADS = 3


def _mode(suffix: str) -> str:
    spec = VARIANTS[suffix][0]
    if spec is None:
        return "batching off"
    tuned = " (tuned)" if suffix == "-tuned" else ""
    return "batching {max_size}/{max_wait_ms}ms".format(**spec) + tuned


def _reload_ms(ctx: Context, server: Process, name: str) -> list[float]:
    """First request after an admin unload minus a warm one, RELOADS times."""
    http = Http(server.port)
    request = ctx.text_request(server.port, name)
    times: list[float] = []
    try:
        for _ in range(RELOADS):
            unload(http, name)
            (status, first), *_ = fire(server.port, [request])
            assert status == 200, f"reload request: {status}\n{server.tail()}"
            warm = median(fire(server.port, [request])[0][1] for _ in range(3))
            times.append((first - warm) * 1e3)
    finally:
        http.close()
    return times


def _serve(
    ctx: Context,
    label: str,
    models: dict[str, dict[str, Any]],
    raw: dict[str, Any],
    reload: str,
    threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """wrk -c16 on every model of one server; its GET /models entries; then `reload` reloads."""
    settings = {} if threads is None else {"torch_threads": threads}
    config = write_config(ctx.workdir, label, models, **settings)
    with ready_server(config, label) as server:
        kinds = {name: MODEL_KIND[name.split("-")[0]] for name in models}
        raw.update(wrk_rounds(ctx, server, kinds, 16))
        entries = {m["name"]: m for m in Http(server.port).get("/models")["models"]}
        raw[f"{label}-reload-ms"] = _reload_ms(ctx, server, reload)
    return entries


def _notes(result: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    """load_count, CPU per request, mean batch and wrk problems of one wrk summary."""
    result["load_count"] = entry["load_count"]
    result["batches"] = entry["batches"]
    notes = [f"load_count {entry['load_count']}"] if entry["load_count"] != 1 else []
    notes.append(
        f"CPU per request: server {result['server_cpu_ms_per_req']:.2f} ms, "
        f"wrk {result['wrk_cpu_ms_per_req']:.2f} ms"
    )
    if entry["batches"] and entry["batches"]["batches"]:
        result["mean_batch"] = entry["batches"]["inputs"] / entry["batches"]["batches"]
        notes.append(f"mean batch {result['mean_batch']:.1f} inputs")
    if result["errors"]:
        notes.append(wrk_problems(result))
    return notes


def _variant_models() -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}
    for base_name, suffixes in THROUGHPUT_MODELS.items():
        for suffix in suffixes:
            spec = VARIANTS[suffix][0]
            extra = {} if spec is None else {"batch": spec}
            models[base_name + suffix] = model(base_name, hot=True, **extra)
    return models


def _variant_rows(
    ctx: Context, raw: dict[str, Any], entries: dict[str, dict[str, Any]]
) -> list[Row]:
    rows: list[Row] = []
    for base_name, suffixes in THROUGHPUT_MODELS.items():
        base = ctx.baseline_loop(base_name)
        raw[f"{base_name}-inproc"] = {k: v for k, v in base.items() if k != "latencies_s"}
        for suffix in suffixes:
            name = base_name + suffix
            rows.append(
                Row(
                    f"throughput: {base_name}, 16 clients, {_mode(suffix)}",
                    raw[name]["rps"],
                    base["rate"],
                    "req/s",
                    "ratio",
                    VARIANTS[suffix][1],
                    higher_is_better=True,
                    note="; ".join(_notes(raw[name], entries[name])),
                )
            )
    return rows


def _all_cores_row(
    ctx: Context, raw: dict[str, Any], entries: dict[str, dict[str, Any]], label: str
) -> Row:
    base = ctx.baseline_loop("minilm", threads=ALL_CORES)
    raw["minilm-inproc-allcores"] = {k: v for k, v in base.items() if k != "latencies_s"}
    notes = _notes(raw["minilm-allcores"], entries["minilm-allcores"])
    _notes(raw["langid-allcores"], entries["langid-allcores"])
    reload_all, reload_default = (median(raw[f"{k}-reload-ms"]) for k in (label, "throughput"))
    notes.append(
        f"in-process baseline at {base['torch_threads']} torch threads; in the same server, "
        f"langid 16 clients 32/5ms {raw['langid-allcores']['rps']:.0f} req/s (default threads: "
        f"{raw['langid']['rps']:.0f}), langid reload after an unload (first request - warm, "
        f"median of {RELOADS}) {reload_all:.1f} ms (default threads: {reload_default:.1f} ms)"
    )
    return Row(
        f"throughput: minilm, 16 clients, {_mode('')}, torch_threads=all cores ({ALL_CORES})",
        raw["minilm-allcores"]["rps"],
        base["rate"],
        "req/s",
        "ratio",
        2.0,
        higher_is_better=True,
        note="; ".join(notes),
    )


def throughput(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """16 concurrent clients (wrk -c16), batching on and off, vs. the sequential pipeline."""
    raw: dict[str, Any] = {"batch": BATCH, "tuned": TUNED, "connections": 16}
    entries = _serve(ctx, "throughput", _variant_models(), raw, "langid")
    all_models = {f"{n}-allcores": model(n, hot=True, batch=BATCH) for n in ALL_CORES_MODELS}
    label = "throughput-allcores"
    entries |= _serve(ctx, label, all_models, raw, "langid-allcores", ALL_CORES)
    rows = _variant_rows(ctx, raw, entries)
    rows.append(_all_cores_row(ctx, raw, entries, label))
    return rows, raw
