"""Scenario `startup`: process start -> /health/live 200, the registry vs. a bare FastAPI app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.context import Context
from bench.progress import progress
from bench.quiet import Interference, cpu_seconds
from bench.row import Row
from bench.servers import VENV_PY, default_registry, server_env, start_server, write_config
from bench.stats import median
from devkit.server import Process, free_port

BARE_APP = Path(__file__).resolve().parent / "bare_app.py"
VARIANTS = ("bare", "registry", "registry-lazy")


def _start(ctx: Context, variant: str, configs: dict[str, Path]) -> Process:
    if variant != "bare":
        return start_server(configs[variant], f"startup-{variant}")
    port = free_port()
    argv = [str(VENV_PY), str(BARE_APP), str(port)]
    return Process(argv, ctx.workdir / f"bare-{port}.log", port, server_env())


def _time_once(ctx: Context, variant: str, configs: dict[str, Path]) -> tuple[float, float, float]:
    """Seconds from the start to /health/live 200, the server's CPU seconds by then, and the
    cores others used meanwhile (CPU time is the steadier figure on a shared machine)."""
    ctx.quiet.wait()
    server = _start(ctx, variant, configs)
    try:
        with Interference([server.pid]) as other:
            seconds = server.wait_live(120.0)
            cpu = cpu_seconds(server.pid)
    finally:
        server.stop()
    return seconds, cpu, round(other.cores, 3)


def startup(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Process start -> /health/live 200: the registry vs. a bare FastAPI app."""
    configs = {
        "registry": write_config(ctx.workdir, "startup-default", default_registry(hot=True)),
        "registry-lazy": write_config(ctx.workdir, "startup-lazy", default_registry(hot=False)),
    }
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    cpu: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    others: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for rep in range(ctx.reps + 1):  # rep 0 warms the page cache and is discarded
        for variant in VARIANTS:
            seconds, cpu_used, cores = _time_once(ctx, variant, configs)
            if rep:
                times[variant].append(seconds)
                cpu[variant].append(cpu_used)
                others[variant].append(cores)
        if rep:
            progress(
                f"  startup rep {rep}/{ctx.reps}: "
                + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items())
            )
    base = median(times["bare"]) * 1e3
    base_cpu = median(cpu["bare"]) * 1e3
    notes = {v: f"CPU to live {median(cpu[v]) * 1e3:.0f} ms (bare {base_cpu:.0f} ms)" for v in cpu}
    rows = [
        Row(
            "startup: default registry (2 hot models preloading)",
            median(times["registry"]) * 1e3,
            base,
            "ms",
            "ratio",
            1.5,
            note=notes["registry"],
        ),
        Row(
            "startup: registry, no hot models",
            median(times["registry-lazy"]) * 1e3,
            base,
            "ms",
            "ratio",
            1.5,
            note=notes["registry-lazy"],
        ),
    ]
    return rows, {"seconds": times, "cpu_seconds": cpu, "others_cores": others}
