"""wrk on several models of one hot server, in interleaved rounds; medians over the rounds.

Interleaving the models and taking medians keeps one disturbed round (the machine is shared)
from deciding a figure. Used by the warm and throughput scenarios.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.context import Context
from bench.progress import progress
from bench.quiet import cpu_seconds
from bench.stats import median
from bench.wrk import run_wrk, wrk_script
from devkit.server import Process

ROUNDS = 3


def _round(
    ctx: Context, server: Process, name: str, script: Path, seconds: float, connections: int
) -> dict[str, Any]:
    """One wrk run on a model after a quiet wait, with the server's CPU time."""

    def once() -> dict[str, Any]:
        before = cpu_seconds(server.pid)
        result = run_wrk(server.port, name, script, seconds, connections)
        result["server_cpu_s"] = cpu_seconds(server.pid) - before
        return result

    return ctx.quiet.measure(f"wrk on {name}", [server.pid], once)


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of one model's rounds."""
    latency = {
        key: median(res["latency_us"][key] for res in results)
        for key in ("p50", "p90", "p99", "mean", "max")
    }
    return {
        "rps": median(res["rps"] for res in results),
        "latency_us": latency,
        "requests": sum(res["requests"] for res in results),
        "errors": sum(sum(res["errors"].values()) for res in results),
        "others_cores": max(res["others_cores"] for res in results),
        # CPU per request: the server process (all threads) and the wrk client.
        "server_cpu_ms_per_req": median(
            res["server_cpu_s"] / res["requests"] * 1e3 for res in results
        ),
        "wrk_cpu_ms_per_req": median(res["wrk_cpu_s"] / res["requests"] * 1e3 for res in results),
        "rounds": results,
    }


def wrk_rounds(
    ctx: Context, server: Process, names: dict[str, str], connections: int
) -> dict[str, dict[str, Any]]:
    """wrk on each model (name -> input kind) in turn, ROUNDS rounds of duration/ROUNDS."""
    seconds = max(2.0, ctx.duration / ROUNDS)
    scripts = {
        kind: wrk_script(ctx.workdir, kind, ctx.inputs.files(kind)) for kind in names.values()
    }
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for name, kind in names.items():  # warm-up, discarded
        run_wrk(server.port, name, scripts[kind], 2.0, connections)
    for r in range(ROUNDS):
        for name, kind in names.items():
            result = _round(ctx, server, name, scripts[kind], seconds, connections)
            rounds[name].append(result)
            progress(
                f"  round {r + 1}/{ROUNDS} wrk -c{connections} {seconds:g}s on {name}: "
                f"{result['rps']:.0f} req/s, p50 {result['latency_us']['p50'] / 1e3:.2f} ms, "
                f"p99 {result['latency_us']['p99'] / 1e3:.2f} ms"
            )
    return {name: _summary(results) for name, results in rounds.items()}


def wrk_problems(summary: dict[str, Any]) -> str:
    """A note when wrk saw socket errors or non-2xx answers (else empty)."""
    return f"wrk errors (non-2xx included): {summary['errors']}" if summary["errors"] else ""
