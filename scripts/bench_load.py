"""Scenarios of scripts/bench.py under loads and evictions: isolation, stampede, memory."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from bench_common import (
    BATCH,
    IRIS_INPUT,
    Process,
    admin_available,
    measure_quietly,
    median,
    model,
    progress,
    start_server,
    wait_quiet,
    wait_ready,
    wait_state,
    write_config,
)
from bench_http import Http, fire
from bench_report import Row
from bench_scenarios import Context
from bench_wrk import run_wrk, wrk_script


def _loop_in_thread(body: Callable[[], None]) -> tuple[threading.Thread, threading.Event]:
    """Call body() until the event is set."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            body()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stop


# -------------------------------------------------------------------- isolation


def isolation(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """p99 of warm langid (wrk -c1) while bert-memory-demo loads again and again, vs. quiet."""
    models = {
        "langid": model("langid", hot=True, batch=BATCH),
        "bert-memory-demo": model("bert-memory-demo"),
        "minilm": model("minilm"),
    }
    config = write_config(ctx.workdir, "isolation", models, memory_budget="300MiB")
    script = wrk_script(ctx.workdir, "text", ctx.inputs.files("text"))
    raw: dict[str, Any] = {}
    with start_server(config, "isolation") as server:
        wait_ready(server)
        http = Http(server.port)
        admin = admin_available(http, "bert-memory-demo")
        raw["how"] = (
            "admin API: POST /models/bert-memory-demo/load (or a predict), then .../unload"
            if admin
            else "no admin API: predict bert-memory-demo, then minilm (the budget evicts it)"
        )
        progress(f"  loads by {raw['how']}")

        def langid_wrk() -> dict[str, Any]:
            return run_wrk(server.port, "langid", script, ctx.duration, 1)

        run_wrk(server.port, "langid", script, 2.0, 1)  # warm-up
        raw["quiet_before"] = measure_quietly("wrk on langid", [server.pid], langid_wrk)
        loader = Http(server.port)
        outcomes: list[int] = []

        def reload_big() -> None:
            if admin:
                status, _ = loader.admin("bert-memory-demo", "load")
                if status in (404, 405):
                    status, _ = loader.predict_text("bert-memory-demo", "load me")
                outcomes.append(status)
                loader.admin("bert-memory-demo", "unload")
                wait_state(loader, ["bert-memory-demo"], "unloaded")
            else:
                outcomes.append(loader.predict_text("bert-memory-demo", "load me")[0])
                outcomes.append(loader.predict_text("minilm", "evict the big one")[0])

        def while_loading() -> dict[str, Any]:
            before = http.get("/models/bert-memory-demo")["load_count"]
            thread, stop = _loop_in_thread(reload_big)
            try:
                time.sleep(0.5)
                result = langid_wrk()
            finally:
                stop.set()
                thread.join(120)
            result["big_loads"] = http.get("/models/bert-memory-demo")["load_count"] - before
            return result

        raw["loading"] = measure_quietly("wrk on langid while loading", [server.pid], while_loading)
        entry = http.get("/models/bert-memory-demo")
        raw["big_loads"] = raw["loading"]["big_loads"]
        raw["big_load_seconds"] = entry["load_seconds"]
        raw["loader_statuses"] = {str(s): outcomes.count(s) for s in set(outcomes)}
        raw["quiet_after"] = measure_quietly("wrk on langid", [server.pid], langid_wrk)
    quiet = [raw["quiet_before"]["latency_us"]["p99"], raw["quiet_after"]["latency_us"]["p99"]]
    busy = raw["loading"]["latency_us"]["p99"]
    progress(
        f"  langid p99: quiet {quiet[0] / 1e3:.2f}/{quiet[1] / 1e3:.2f} ms, while loading "
        f"{busy / 1e3:.2f} ms ({raw['big_loads']} loads of bert-memory-demo)"
    )
    row = Row(
        "isolation: langid p99 while bert-memory-demo loads",
        busy / 1e3,
        sum(quiet) / 2 / 1e3,
        "ms",
        "ratio",
        1.5,
        note=f"{raw['big_loads']} loads during the run",
    )
    return [row], raw


# --------------------------------------------------------------------- stampede


def stampede(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """64 simultaneous first requests to cold langid: 1 load, slowest vs. a single request."""
    models = {"digits": model("digits", hot=True), "langid": model("langid", batch=BATCH)}
    config = write_config(ctx.workdir, "stampede", models)
    raw: dict[str, Any] = {
        "single_s": [],
        "slowest_s": [],
        "slowest_warm_s": [],
        "loads": [],
        "statuses": [],
    }
    server: Process | None = None

    def fresh() -> tuple[Process, Http]:
        nonlocal server
        if server is not None:
            server.stop()
        server = start_server(config, "stampede")
        wait_ready(server)
        return server, Http(server.port)

    try:
        server, http = fresh()
        admin = admin_available(http, "langid")
        raw["cold_by"] = "admin unload" if admin else "a fresh server"
        if admin:  # pay langid's one-time imports, so that every measured load is a reload
            http.predict_text("langid", "warm up")
            http.admin("langid", "unload")
            wait_state(http, ["langid"], "unloaded")
        first = True
        for rep in range(ctx.reps):
            for count in (1, 64):
                if not first:
                    if admin:
                        http.admin("langid", "unload")
                        wait_state(http, ["langid"], "unloaded")
                    else:
                        server, http = fresh()
                first = False
                before = http.get("/models/langid")["load_count"]
                requests = [ctx.text_request(server.port, "langid", i % 16) for i in range(count)]
                wait_quiet([server.pid])
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
                    wait_quiet([server.pid])
                    warm = fire(server.port, requests)
                    raw["slowest_warm_s"].append(max(seconds for _, seconds in warm))
                progress(
                    f"  stampede rep {rep + 1}/{ctx.reps}: {count} request(s), slowest "
                    f"{slowest * 1e3:.0f} ms, {loads} load(s), statuses {statuses}"
                )
    finally:
        if server is not None:
            server.stop()
    all_ok = all(statuses == [200] for statuses in raw["statuses"])
    rows = [
        Row(
            "stampede: slowest of 64 first requests vs 1",
            median(raw["slowest_s"]) * 1e3,
            median(raw["single_s"]) * 1e3,
            "ms",
            "ratio",
            1.3,
            note="" if all_ok else f"statuses {raw['statuses']}",
        ),
        Row(
            "stampede: slowest of 64 cold vs 64 warm (info)",
            median(raw["slowest_s"]) * 1e3,
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
    return rows, raw


# ----------------------------------------------------------------------- memory


def memory(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Tracked bytes never exceed the budget under evictions; RSS returns after unloading."""
    names = ["digits", "langid", "iris", "minilm", "bert-memory-demo"]
    models = {name: model(name) for name in names}
    models["minilm"]["batch"] = models["langid"]["batch"] = BATCH
    config = write_config(ctx.workdir, "memory", models, memory_budget="300MiB")
    png = ctx.inputs.pngs[0].read_bytes()
    sentence = json.loads(ctx.inputs.text_bodies[1].read_text())["inputs"]
    raw: dict[str, Any] = {}

    def predict(http: Http, name: str) -> int:
        if name == "digits":
            return http.predict_image(name, png)[0]
        if name == "iris":
            return http.predict_text(name, [IRIS_INPUT])[0]
        return http.predict_text(name, sentence)[0]

    server = start_server(config, "memory")
    try:
        server.wait_status("/health/live")
        http = Http(server.port)
        admin = admin_available(http, "iris")
        if not admin:
            progress("  no admin unload API: restarting with idle_ttl 1s on every model")
            server.stop()
            config = write_config(
                ctx.workdir, "memory-ttl", models, memory_budget="300MiB", idle_ttl="1s"
            )
            server = start_server(config, "memory-ttl")
            server.wait_status("/health/live")
            http = Http(server.port)
        raw["unload_by"] = "admin API" if admin else "idle_ttl: 1s"

        def unload_all() -> None:
            if admin:
                for entry in http.get("/models")["models"]:
                    if entry["state"] != "unloaded":
                        http.admin(entry["name"], "unload")
            wait_state(http, names, "unloaded", timeout=60)
            time.sleep(1.0)

        def rss_now() -> int:
            samples = []
            for _ in range(5):
                samples.append(server.rss_bytes())
                time.sleep(0.2)
            return int(median(samples))

        raw["rss_start"] = server.rss_bytes()

        # The first load of each kind of model pays imports and allocator growth that stay
        # (measured: ~100 MiB). Pay them for every model the run uses, one at a time, then
        # unload.
        def warm_up(group: tuple[str, ...]) -> int:
            for name in group:
                status = predict(http, name)
                if status != 200:
                    raise RuntimeError(f"warm-up predict of {name}: {status}\n{server.tail()}")
                unload_all()  # minilm and bert-memory-demo do not fit together
            return rss_now()

        raw["rss_before_tiny"] = warm_up(("digits", "langid", "iris"))
        raw["rss_before"] = warm_up(("minilm", "bert-memory-demo"))
        progress(
            f"  RSS after the one-time costs: tiny models {raw['rss_before_tiny'] / 2**20:.0f} "
            f"MiB, every model {raw['rss_before'] / 2**20:.0f} MiB"
        )

        samples: list[tuple[float, int, int, int]] = []
        sampler_http = Http(server.port)

        def sample() -> None:
            snap = sampler_http.get("/models")
            samples.append(
                (time.monotonic(), snap["used_bytes"], snap["budget_bytes"], server.rss_bytes())
            )
            time.sleep(0.02)

        sampler, stop_sampler = _loop_in_thread(sample)
        statuses: list[int] = []
        try:
            cycles = 2 if ctx.quick else 3
            for cycle in range(cycles):
                for name in ("bert-memory-demo", "langid", "minilm", "digits", "iris"):
                    statuses.append(predict(http, name))
                progress(f"  eviction cycle {cycle + 1}/{cycles}: statuses {sorted(set(statuses))}")
                if cycle == 0:  # every model has been loaded once: the steady-state level
                    unload_all()
                    raw["rss_after_first_cycle"] = rss_now()
            # Two clients at once, one on each big model: loads contend for the budget.
            clients = []
            for order in (["bert-memory-demo", "digits"], ["minilm", "langid", "iris"]):
                client = Http(server.port)

                def one_round(client: Http = client, order: list[str] = order) -> None:
                    for name in order:
                        statuses.append(predict(client, name))

                clients.append(_loop_in_thread(one_round))
            time.sleep(ctx.duration)
            for _, stop in clients:
                stop.set()
            for thread, _ in clients:
                thread.join(120)
        finally:
            stop_sampler.set()
            sampler.join(10)
        snapshot = http.get("/models")
        raw["peak_used_bytes_server"] = snapshot.get("peak_used_bytes")
        raw["load_counts"] = {m["name"]: m["load_count"] for m in snapshot["models"]}
        raw["sizes"] = {m["name"]: m["size_bytes"] for m in snapshot["models"]}
        raw["statuses"] = {str(s): statuses.count(s) for s in sorted(set(statuses))}
        budget = samples[0][2]
        raw["budget_bytes"] = budget
        raw["samples"] = len(samples)
        raw["sample_interval_ms"] = (
            (samples[-1][0] - samples[0][0]) / (len(samples) - 1) * 1e3 if len(samples) > 1 else 0
        )
        raw["max_used_sampled"] = max(s[1] for s in samples)
        raw["over_budget_samples"] = sum(1 for s in samples if s[1] > s[2])
        raw["rss_peak"] = max(s[3] for s in samples)
        unload_all()
        raw["rss_after"] = rss_now()
    finally:
        server.stop()
    loads = sum(raw["load_counts"].values())
    progress(
        f"  {loads} loads, max used {raw['max_used_sampled'] / 2**20:.1f} MiB of "
        f"{budget / 2**20:.0f} MiB over {raw['samples']} samples; RSS "
        f"{raw['rss_before'] / 2**20:.0f} -> peak {raw['rss_peak'] / 2**20:.0f} -> "
        f"{raw['rss_after'] / 2**20:.0f} MiB"
    )
    peak = max(raw["max_used_sampled"], raw["peak_used_bytes_server"] or 0)

    def rss_row(label: str, baseline: str, target: float | None, note: str) -> Row:
        """RSS after unloading everything against the level in raw[baseline]."""
        after, before = raw["rss_after"] / 2**20, raw[baseline] / 2**20
        return Row(label, after, before, "MiB", "ratio", target, note=note)

    rows = [
        Row(
            "memory: peak tracked bytes vs budget",
            peak / 2**20,
            budget / 2**20,
            "MiB",
            "ratio",
            1.0,
            note=(
                f"{raw['samples']} samples every {raw['sample_interval_ms']:.0f} ms, "
                f"{raw['over_budget_samples']} over budget; {loads} loads; "
                f"statuses {raw['statuses']}"
            ),
        ),
        rss_row(
            "memory: RSS after unloading all vs before (every model loaded once first)",
            "rss_before",
            1.05,
            f"peak RSS {raw['rss_peak'] / 2**20:.0f} MiB; unloaded by {raw['unload_by']}",
        ),
        rss_row(
            "memory: same, vs before after a tiny-model warm-up only (info)",
            "rss_before_tiny",
            None,
            "baseline: digits, langid, iris loaded and unloaded once (the old pre-level)",
        ),
        rss_row(
            "memory: RSS after unloading all vs after cycle 1 (leak check)",
            "rss_after_first_cycle",
            1.05,
            "baseline: every model loaded once, then all unloaded",
        ),
    ]
    return rows, raw
