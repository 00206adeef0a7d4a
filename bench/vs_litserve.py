"""Scenario `litserve`: 16 clients (wrk -c16) on the registry and on LitServe, the same models.

One registry server serves digits, langid and minilm (hot, models.yaml's batching); for each
model in turn a LitServe server (bench/litserve_server.py) serves the same entry, loaded by
the registry's loader, with LitServe's batching at the same max_batch_size and batch_timeout
and the same torch threads. Rounds alternate between the two servers (which goes first
alternates too); the row is the median of the registry's rounds over the median of
LitServe's, with every round shown. A row whose per-round ratio moves by more than a third
of its median is reported as noise.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bench.client import Http
from bench.context import MODEL_KIND, Context
from bench.progress import progress
from bench.quiet import cpu_seconds
from bench.rounds import ROUNDS, wrk_problems
from bench.row import Row
from bench.servers import BATCH, VENV_PY, model, ready_server, server_env, write_config
from bench.stats import median
from bench.wrk import run_wrk, wrk_script
from devkit.server import Process, free_port

MODELS = ("digits", "langid", "minilm")
CONNECTIONS = 16
TARGET = 1.3
NOISE = 1 / 3  # the per-round ratio's range, over its median, above which a row is noise
LITSERVE = "0.2.19"  # the version pinned in the bench extras


def litserve_version() -> str:
    """The installed LitServe's version (an error saying how to install it if missing)."""
    try:
        version = importlib.metadata.version("litserve")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            "LitServe is not installed: scripts/bench.sh installs the bench extras "
            f"(litserve=={LITSERVE}), or: .venv/bin/python -m pip install -c constraints.txt "
            f"litserve=={LITSERVE}"
        ) from None
    return version


def descendants(pid: int) -> list[int]:
    """The PIDs of every live descendant of `pid` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            found += kids
            stack += kids
    return found


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU time the processes have used so far (a gone one counts 0)."""
    return sum(cpu_seconds(pid) for pid in pids)


@contextmanager
def litserve_server(ctx: Context, name: str) -> Iterator[tuple[Process, list[int]]]:
    """A LitServe server of one model once GET /health is 200; its PIDs (it and its children).

    Stopped by its PID (SIGTERM: LitServe's shutdown); a child still alive afterwards is
    killed by its PID.
    """
    port = free_port()
    job = {
        "name": name,
        "entry": model(name),
        "port": port,
        "threads": None,  # the registry's default, as the registry server's
        "max_batch_size": BATCH["max_size"],
        "batch_timeout_s": BATCH["max_wait_ms"] / 1000,
    }
    argv = [str(VENV_PY), "-m", "bench.litserve_server", json.dumps(job)]
    server = Process(argv, ctx.workdir / f"litserve-{name}-{port}.log", port, server_env())
    pids = [server.pid]
    try:
        server.wait_status("/health", 200, timeout=180.0)
        pids += descendants(server.pid)
        yield server, pids
    finally:
        pids = [server.pid, *descendants(server.pid)] if server.proc.poll() is None else pids
        server.stop()
        for pid in pids[1:]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _round(ctx: Context, port: int, name: str, script: Path, pids: list[int]) -> dict[str, Any]:
    """One wrk run after a quiet wait, with the CPU time of the server's processes."""
    seconds = max(2.0, ctx.duration / ROUNDS)

    def once() -> dict[str, Any]:
        before = tree_cpu_seconds(pids)
        result = run_wrk(port, name, script, seconds, CONNECTIONS)
        result["server_cpu_s"] = tree_cpu_seconds(pids) - before
        return result

    return ctx.quiet.measure(f"wrk on {name}", pids, once)


def _sample(port: int, name: str, body: bytes) -> Any:
    """One answer to the first JSON input (to show both servers answer alike)."""
    http = Http(port)
    try:
        status, data = http.request(
            "POST", f"/models/{name}/predict", body, {"Content-Type": "application/json"}
        )
    finally:
        http.close()
    return {"status": status, "keys": sorted(data) if isinstance(data, dict) else repr(data)}


def compare(ctx: Context, ours: Process, name: str) -> dict[str, Any]:
    """Interleaved wrk rounds on one model: the registry and LitServe."""
    kind = MODEL_KIND[name]
    script = wrk_script(ctx.workdir, kind, ctx.inputs.files(kind))
    raw: dict[str, Any] = {"registry": [], "litserve": []}
    with litserve_server(ctx, name) as (theirs, their_pids):
        raw["litserve_pids"] = len(their_pids)
        servers = {
            "registry": (ours.port, [ours.pid, *descendants(ours.pid)]),
            "litserve": (theirs.port, their_pids),
        }
        if kind != "image":
            body = ctx.inputs.files(kind)[0].read_bytes()
            raw["answers"] = {k: _sample(port, name, body) for k, (port, _) in servers.items()}
        for port, _ in servers.values():  # warm-up, discarded
            run_wrk(port, name, script, 2.0, CONNECTIONS)
        for r in range(ROUNDS):
            order = ["registry", "litserve"] if r % 2 == 0 else ["litserve", "registry"]
            for who in order:
                port, pids = servers[who]
                result = _round(ctx, port, name, script, pids)
                raw[who].append(result)
                progress(
                    f"  round {r + 1}/{ROUNDS} wrk -c{CONNECTIONS} on {name}, {who}: "
                    f"{result['rps']:.0f} req/s, p50 {result['latency_us']['p50'] / 1e3:.2f} ms"
                )
    return raw


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rps": median(r["rps"] for r in rounds),
        "rps_rounds": [r["rps"] for r in rounds],
        "p50_ms": median(r["latency_us"]["p50"] for r in rounds) / 1e3,
        "errors": sum(sum(r["errors"].values()) for r in rounds),
        "server_cpu_ms_per_req": median(
            r["server_cpu_s"] / r["requests"] * 1e3 for r in rounds if r["requests"]
        ),
    }


def row(name: str, raw: dict[str, Any], entry: dict[str, Any]) -> Row:
    """The row of one model: the registry's median rate over LitServe's, noise flagged."""
    ours, theirs = _summary(raw["registry"]), _summary(raw["litserve"])
    raw["summary"] = {"registry": ours, "litserve": theirs}
    ratios = [
        a / b if b else float("nan")
        for a, b in zip(ours["rps_rounds"], theirs["rps_rounds"], strict=True)
    ]
    middle = median(ratios)
    noise = bool(middle) and (max(ratios) - min(ratios)) / middle > NOISE
    raw["ratio_rounds"] = ratios
    raw["noise"] = noise
    notes = [
        "per round (req/s): registry "
        + ", ".join(f"{v:.0f}" for v in ours["rps_rounds"])
        + "; LitServe "
        + ", ".join(f"{v:.0f}" for v in theirs["rps_rounds"])
        + "; ratio "
        + ", ".join(f"{v:.2f}" for v in ratios)
        + (f" (moves by more than {NOISE:.2f} of its median: noise)" if noise else ""),
        f"p50 {ours['p50_ms']:.2f} ms vs {theirs['p50_ms']:.2f} ms",
        f"CPU per request (every process of the server): {ours['server_cpu_ms_per_req']:.2f} ms "
        f"vs {theirs['server_cpu_ms_per_req']:.2f} ms",
    ]
    batches = entry.get("batches") or {}
    if batches.get("batches"):
        notes.append(f"registry mean batch {batches['inputs'] / batches['batches']:.1f} inputs")
    for who, summary in (("registry", ours), ("LitServe", theirs)):
        if summary["errors"]:
            notes.append(f"{who}: " + wrk_problems(summary))
    return Row(
        f"throughput vs LitServe: {name}, {CONNECTIONS} clients, batching "
        "{max_size}/{max_wait_ms}ms".format(**BATCH),
        ours["rps"],
        theirs["rps"],
        "req/s",
        "ratio",
        TARGET,
        higher_is_better=True,
        note="; ".join(notes),
        noise=noise,
    )


def litserve(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """The registry against LitServe serving the same models, 16 clients, batching on."""
    version = litserve_version()
    raw: dict[str, Any] = {"litserve": version, "batch": BATCH, "connections": CONNECTIONS}
    models = {name: model(name, hot=True, batch=BATCH) for name in MODELS}
    config = write_config(ctx.workdir, "litserve-registry", models)
    started = time.monotonic()
    with ready_server(config, "litserve-registry") as ours:
        for name in MODELS:
            raw[name] = compare(ctx, ours, name)
        entries = {m["name"]: m for m in Http(ours.port).get("/models")["models"]}
    raw["seconds"] = time.monotonic() - started
    rows = [row(name, raw[name], entries[name]) for name in MODELS]
    return rows, raw
