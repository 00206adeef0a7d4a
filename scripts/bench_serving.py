"""Scenarios of scripts/bench.py that drive a hot server with wrk: warm latency, throughput."""

from __future__ import annotations

import os
from typing import Any

from bench_common import (
    BATCH,
    Process,
    admin_available,
    cpu_seconds,
    measure_quietly,
    median,
    model,
    progress,
    start_server,
    wait_ready,
    wait_state,
    write_config,
)
from bench_http import Http, fire
from bench_report import Row
from bench_scenarios import MODEL_KIND, Context
from bench_wrk import run_wrk, wrk_script

# Batching tuned to the 16 clients: a batch leaves as soon as every client has a request in.
TUNED = {"max_size": 16, "max_wait_ms": 5}


# ----------------------------------------------------------------- warm latency


def _hot_server(
    ctx: Context, name: str, models: dict[str, dict[str, Any]], **settings: Any
) -> Process:
    server = start_server(write_config(ctx.workdir, name, models, **settings), name)
    try:
        wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


ROUNDS = 3


def _wrk_rounds(
    ctx: Context, server: Process, names: dict[str, str], connections: int
) -> dict[str, dict[str, Any]]:
    """wrk on each model in turn, ROUNDS rounds of duration/ROUNDS; medians over the rounds.

    Interleaving the models and taking medians keeps one disturbed round (the machine is
    shared) from deciding a figure.
    """
    seconds = max(2.0, ctx.duration / ROUNDS)
    scripts = {
        kind: wrk_script(ctx.workdir, kind, ctx.inputs.files(kind)) for kind in names.values()
    }
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for name, kind in names.items():  # warm-up, discarded
        run_wrk(server.port, name, scripts[kind], 2.0, connections)
    for r in range(ROUNDS):
        for name, kind in names.items():

            def once(name: str = name, kind: str = kind) -> dict[str, Any]:
                before = cpu_seconds(server.pid)
                result = run_wrk(server.port, name, scripts[kind], seconds, connections)
                result["server_cpu_s"] = cpu_seconds(server.pid) - before
                return result

            result = measure_quietly(f"wrk on {name}", [server.pid], once)
            rounds[name].append(result)
            progress(
                f"  round {r + 1}/{ROUNDS} wrk -c{connections} {seconds:g}s on {name}: "
                f"{result['rps']:.0f} req/s, p50 {result['latency_us']['p50'] / 1e3:.2f} ms, "
                f"p99 {result['latency_us']['p99'] / 1e3:.2f} ms"
            )
    summary: dict[str, dict[str, Any]] = {}
    for name, results in rounds.items():
        latency = {
            key: median(res["latency_us"][key] for res in results)
            for key in ("p50", "p90", "p99", "mean", "max")
        }
        summary[name] = {
            "rps": median(res["rps"] for res in results),
            "latency_us": latency,
            "requests": sum(res["requests"] for res in results),
            "errors": sum(sum(res["errors"].values()) for res in results),
            "others_cores": max(res["others_cores"] for res in results),
            # CPU per request: the server process (all threads) and the wrk client.
            "server_cpu_ms_per_req": median(
                res["server_cpu_s"] / res["requests"] * 1e3 for res in results
            ),
            "wrk_cpu_ms_per_req": median(
                res["wrk_cpu_s"] / res["requests"] * 1e3 for res in results
            ),
            "rounds": results,
        }
    return summary


WARM_MODELS = ("digits", "langid")


def warm_latency(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """p50/p99 over HTTP (wrk, 1 keep-alive connection) vs. the pipeline called in-process."""
    models = {name: model(name, hot=True, batch=BATCH) for name in WARM_MODELS}
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    with _hot_server(ctx, "warm", models) as server:
        kinds = {name: MODEL_KIND[name] for name in WARM_MODELS}
        for name, result in _wrk_rounds(ctx, server, kinds, 1).items():
            raw[name] = {"http": result}
    for name in WARM_MODELS:
        base = ctx.baseline_loop(name)
        raw[name]["inproc"] = base
        lat = raw[name]["http"]["latency_us"]
        what = "image upload" if MODEL_KIND[name] == "image" else "JSON text"
        progress(
            f"  {name}: HTTP p50 {lat['p50'] / 1e3:.2f} ms p99 {lat['p99'] / 1e3:.2f} ms; "
            f"in-process p50 {base['p50_ms']:.2f} ms p99 {base['p99_ms']:.2f} ms"
        )
        note = _wrk_problems(raw[name]["http"])
        rows.append(
            Row(
                f"warm p50: {name} ({what})",
                lat["p50"] / 1e3,
                base["p50_ms"],
                "ms",
                "delta",
                2.0,
                note=note,
            )
        )
        rows.append(
            Row(f"warm p99: {name} ({what})", lat["p99"] / 1e3, base["p99_ms"], "ms", "delta", None)
        )
    return rows, raw


def _wrk_problems(summary: dict[str, Any]) -> str:
    """A note when wrk saw socket errors or non-2xx answers (else empty)."""
    return f"wrk errors (non-2xx included): {summary['errors']}" if summary["errors"] else ""


# ------------------------------------------------------------------- throughput

# name suffix -> (batch spec, target); the tuned variant is for comparison only: the batcher
# adapts its target size to recent batches, so max_size 16 should not matter any more.
VARIANTS: dict[str, tuple[dict[str, Any] | None, float | None]] = {
    "": (BATCH, 2.0),
    "-tuned": (TUNED, None),
    "-nobatch": (None, None),
}
THROUGHPUT_MODELS = {"digits": ("", "-tuned", "-nobatch"), "langid": ("", "-tuned", "-nobatch")}
THROUGHPUT_MODELS["minilm"] = ("", "-nobatch")


def _mode(suffix: str) -> str:
    spec = VARIANTS[suffix][0]
    if spec is None:
        return "batching off"
    tuned = " (tuned)" if suffix == "-tuned" else ""
    return "batching {max_size}/{max_wait_ms}ms".format(**spec) + tuned


# A second server with torch_threads = every core (README: for a compute-bound model), against
# an in-process baseline with as many threads; langid rides along to show what the event loop
# loses to torch's threads, and a few langid reloads show the first-inference cost.
ALL_CORES = os.cpu_count() or 1
ALL_CORES_MODELS = ("minilm", "langid")
RELOADS = 3


def _reload_ms(ctx: Context, server: Process, name: str) -> list[float]:
    """First request after an admin unload minus a warm one, RELOADS times ([]: no admin API)."""
    http = Http(server.port)
    request = ctx.text_request(server.port, name)
    times: list[float] = []
    try:
        if not admin_available(http, name):  # unloads it if so
            return times
        for _ in range(RELOADS):
            wait_state(http, [name], "unloaded")
            (status, first), *_ = fire(server.port, [request])
            assert status == 200, f"reload request: {status}\n{server.tail()}"
            warm = median(fire(server.port, [request])[0][1] for _ in range(3))
            times.append((first - warm) * 1e3)
            http.admin(name, "unload")
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
    with _hot_server(ctx, label, models, **settings) as server:
        kinds = {name: MODEL_KIND[name.split("-")[0]] for name in models}
        raw.update(_wrk_rounds(ctx, server, kinds, 16))
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
        notes.append(_wrk_problems(result))
    return notes


def throughput(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """16 concurrent clients (wrk -c16), batching on and off, vs. the sequential pipeline."""
    models: dict[str, dict[str, Any]] = {}
    for base_name, suffixes in THROUGHPUT_MODELS.items():
        for suffix in suffixes:
            spec = VARIANTS[suffix][0]
            extra = {} if spec is None else {"batch": spec}
            models[base_name + suffix] = model(base_name, hot=True, **extra)
    raw: dict[str, Any] = {"batch": BATCH, "tuned": TUNED, "connections": 16}
    entries = _serve(ctx, "throughput", models, raw, "langid")
    all_models = {f"{n}-allcores": model(n, hot=True, batch=BATCH) for n in ALL_CORES_MODELS}
    label = "throughput-allcores"
    entries |= _serve(ctx, label, all_models, raw, "langid-allcores", ALL_CORES)
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
    rows.append(
        Row(
            f"throughput: minilm, 16 clients, {_mode('')}, torch_threads=all cores ({ALL_CORES})",
            raw["minilm-allcores"]["rps"],
            base["rate"],
            "req/s",
            "ratio",
            2.0,
            higher_is_better=True,
            note="; ".join(notes),
        )
    )
    return rows, raw
