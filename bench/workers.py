"""Scenario `workers`: process models against thread models.

- isolation: langid p99 (wrk -c1) while bert-memory-demo loads again and again as a process
  model, vs. langid p99 with no load;
- warm p50 of langid and digits as process models vs. as thread models (same server);
- cold load of langid as a process model vs. as a thread model (after the first load);
- front + forkserver + workers RSS after unloading every process model vs. before loading;
- the private memory of a worker holding langid (reported).
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from typing import Any

from bench.client import Http
from bench.context import Context
from bench.progress import progress
from bench.row import Row
from bench.servers import BATCH, model, start_server, unload, wait_state, write_config
from bench.stats import median
from bench.wrk import run_wrk, wrk_script

MODES = ("thread", "process")
KINDS = {"langid": "text", "digits": "image"}


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields and fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _models() -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        for name in KINDS:
            models[f"{name}-{mode}"] = model(name, hot=True, batch=BATCH, isolation=mode)
    models["bert-memory-demo"] = model("bert-memory-demo", isolation="process")
    return models


def workers(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """All five measurements on one server (loads and unloads through the admin API)."""
    config = write_config(ctx.workdir, "workers", _models(), memory_budget="600MiB")
    scripts = {
        kind: wrk_script(ctx.workdir, kind, ctx.inputs.files(kind)) for kind in ("text", "image")
    }
    raw: dict[str, Any] = {}
    with start_server(config, "workers") as server:
        server.wait_ready()
        http = Http(server.port)
        rows = _warm(ctx, server.port, server.pid, scripts, raw)
        rows += _cold(ctx, http, server.pid, raw)
        rows += _isolation(ctx, server.port, server.pid, scripts["text"], raw)
        rows += _memory(ctx, http, server.pid, raw)
    return rows, raw


def _warm(
    ctx: Context, port: int, pid: int, scripts: dict[str, Path], raw: dict[str, Any]
) -> list[Row]:
    seconds = max(2.0, ctx.duration / 3)
    p50: dict[str, list[float]] = {}
    for name, kind in KINDS.items():
        for mode in MODES:
            run_wrk(port, f"{name}-{mode}", scripts[kind], 2.0, 1)  # warm-up
    for _ in range(3):  # interleaved rounds, medians: one disturbed round decides nothing
        for name, kind in KINDS.items():
            for mode in MODES:
                target = f"{name}-{mode}"
                once = functools.partial(run_wrk, port, target, scripts[kind], seconds, 1)
                result = ctx.quiet.measure(f"wrk on {target}", [pid], once)
                p50.setdefault(target, []).append(result["latency_us"]["p50"] / 1e3)
    raw["warm_p50_ms"] = p50
    rows = []
    for name in KINDS:
        process, thread = median(p50[f"{name}-process"]), median(p50[f"{name}-thread"])
        progress(f"  {name} warm p50: process {process:.3f} ms, thread {thread:.3f} ms")
        rows.append(
            Row(
                f"workers: {name} warm p50, process vs thread", process, thread, "ms", "delta", 0.25
            )
        )
    return rows


def _cold(ctx: Context, http: Http, pid: int, raw: dict[str, Any]) -> list[Row]:
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(max(3, ctx.reps)):
        for mode in MODES:
            name = f"langid-{mode}"
            unload(http, name)
            ctx.quiet.wait([pid])
            status, body = http.admin(name, "load")
            if status != 200:
                raise RuntimeError(f"load {name}: {status} {body}")
            seconds[mode].append(http.get(f"/models/{name}")["load_seconds"])
    raw["cold_load_s"] = seconds
    process, thread = median(seconds["process"]), median(seconds["thread"])
    progress(f"  langid reload: process {process * 1e3:.0f} ms, thread {thread * 1e3:.0f} ms")
    return [
        Row(
            "workers: langid cold load, process vs thread",
            process * 1e3,
            thread * 1e3,
            "ms",
            "ratio",
            1.3,
        )
    ]


def _isolation(ctx: Context, port: int, pid: int, script: Path, raw: dict[str, Any]) -> list[Row]:
    def wrk() -> dict[str, Any]:
        return run_wrk(port, "langid-thread", script, ctx.duration, 1)

    quiet = ctx.quiet.measure("wrk on langid", [pid], wrk)["latency_us"]["p99"]
    stop = threading.Event()
    loads = 0

    def reload_big() -> None:
        nonlocal loads
        loader = Http(port)
        while not stop.is_set():
            loader.admin("bert-memory-demo", "load")
            loads += 1
            loader.admin("bert-memory-demo", "unload")

    thread = threading.Thread(target=reload_big, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        busy = wrk()["latency_us"]["p99"]
    finally:
        stop.set()
        thread.join(120)
    after = ctx.quiet.measure("wrk on langid", [pid], wrk)["latency_us"]["p99"]
    raw["isolation"] = {"quiet_p99_us": [quiet, after], "loading_p99_us": busy, "big_loads": loads}
    progress(
        f"  langid p99 quiet {quiet / 1e3:.2f}/{after / 1e3:.2f} ms, "
        f"loading {busy / 1e3:.2f} ms ({loads} loads)"
    )
    return [
        Row(
            "workers: langid p99 while bert-memory-demo loads in a worker",
            busy / 1e3,
            (quiet + after) / 2 / 1e3,
            "ms",
            "ratio",
            1.5,
            note=f"{loads} loads during the run",
        )
    ]


def _memory(ctx: Context, http: Http, pid: int, raw: dict[str, Any]) -> list[Row]:
    process_models = [
        m["name"]
        for m in http.get("/models")["models"]
        if m["isolation"] == "process" or m["name"].endswith("-process")
    ]
    langid = http.get("/models/langid-process")
    for name in process_models:
        http.admin(name, "unload")
    wait_state(http, process_models, "unloaded")
    ctx.quiet.wait([pid])
    before = _rss(_tree(pid))
    for name in process_models:
        http.admin(name, "load")
    loaded = _rss(_tree(pid))
    for name in process_models:
        http.admin(name, "unload")
    wait_state(http, process_models, "unloaded")
    after = _rss(_tree(pid))
    raw["memory"] = {"before": before, "loaded": loaded, "after": after, "langid_worker": langid}
    progress(
        f"  front+workers RSS: before {before / 2**20:.0f} MiB, "
        f"loaded {loaded / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB"
    )
    mib = 2**20
    return [
        Row(
            "workers: front+workers RSS after unloading vs before",
            after / mib,
            before / mib,
            "MiB",
            "ratio",
            1.02,
        ),
        Row(
            "workers: private memory of a worker holding langid",
            langid["worker_private_bytes"] / mib,
            langid["param_bytes"] / mib,
            "MiB",
            "ratio",
            None,
            note=f"USS {langid['worker_uss_bytes'] / mib:.0f} MiB, "
            f"PSS {langid['worker_pss_bytes'] / mib:.0f} MiB; baseline: parameter bytes",
        ),
    ]
