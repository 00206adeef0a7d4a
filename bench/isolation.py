"""Scenario `isolation`: warm langid's p99 while bert-memory-demo loads again and again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.background import loop_in_thread
from bench.client import Http
from bench.context import Context
from bench.progress import progress
from bench.row import Row
from bench.servers import BATCH, model, start_server, unload, write_config
from bench.wrk import run_wrk, wrk_script

BIG = "bert-memory-demo"
HOW = f"admin API: POST /models/{BIG}/load, then .../unload"


def _while_loading(
    port: int, wrk: Callable[[], dict[str, Any]], outcomes: list[int]
) -> Callable[[], dict[str, Any]]:
    """A measurement: wrk on langid while another thread loads and unloads the big model."""
    http, loader = Http(port), Http(port)

    def reload_big() -> None:
        outcomes.append(loader.admin(BIG, "load")[0])
        unload(loader, BIG)

    def measure() -> dict[str, Any]:
        before = http.get(f"/models/{BIG}")["load_count"]
        thread, stop = loop_in_thread(reload_big)
        try:
            time.sleep(0.5)  # let the first load start before the clock does
            result = wrk()
        finally:
            stop.set()
            thread.join(120)
        result["big_loads"] = http.get(f"/models/{BIG}")["load_count"] - before
        return result

    return measure


def isolation(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """p99 of warm langid (wrk -c1) while bert-memory-demo loads again and again, vs. quiet."""
    models = {
        "langid": model("langid", hot=True, batch=BATCH),
        BIG: model(BIG),
        "minilm": model("minilm"),
    }
    config = write_config(ctx.workdir, "isolation", models, memory_budget="300MiB")
    script = wrk_script(ctx.workdir, "text", ctx.inputs.files("text"))
    raw: dict[str, Any] = {"how": HOW}
    progress(f"  loads by {HOW}")
    with start_server(config, "isolation") as server:
        server.wait_ready()

        def langid_wrk() -> dict[str, Any]:
            return run_wrk(server.port, "langid", script, ctx.duration, 1)

        run_wrk(server.port, "langid", script, 2.0, 1)  # warm-up
        raw["quiet_before"] = ctx.quiet.measure("wrk on langid", [server.pid], langid_wrk)
        outcomes: list[int] = []
        loading = _while_loading(server.port, langid_wrk, outcomes)
        raw["loading"] = ctx.quiet.measure("wrk on langid while loading", [server.pid], loading)
        raw["big_loads"] = raw["loading"]["big_loads"]
        raw["big_load_seconds"] = Http(server.port).get(f"/models/{BIG}")["load_seconds"]
        raw["loader_statuses"] = {str(s): outcomes.count(s) for s in set(outcomes)}
        raw["quiet_after"] = ctx.quiet.measure("wrk on langid", [server.pid], langid_wrk)
    quiet = [raw["quiet_before"]["latency_us"]["p99"], raw["quiet_after"]["latency_us"]["p99"]]
    busy = raw["loading"]["latency_us"]["p99"]
    progress(
        f"  langid p99: quiet {quiet[0] / 1e3:.2f}/{quiet[1] / 1e3:.2f} ms, while loading "
        f"{busy / 1e3:.2f} ms ({raw['big_loads']} loads of {BIG})"
    )
    row = Row(
        f"isolation: langid p99 while {BIG} loads",
        busy / 1e3,
        sum(quiet) / 2 / 1e3,
        "ms",
        "ratio",
        1.5,
        note=f"{raw['big_loads']} loads during the run",
    )
    return [row], raw
