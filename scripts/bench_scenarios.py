"""Scenarios of scripts/bench.py: startup and cold load; the Context every scenario gets.

Each scenario measures the server and its baseline in the same run and returns table rows
(see bench_report.Row) and raw numbers. Warm latency and throughput are in bench_serving.py;
isolation, stampede and memory in bench_load.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import (
    BATCH,
    MODELS,
    STORE,
    VENV_PY,
    Interference,
    Process,
    admin_available,
    free_port,
    inproc,
    measure_quietly,
    median,
    model,
    percentile,
    progress,
    server_env,
    start_server,
    wait_quiet,
    wait_ready,
    wait_state,
    write_config,
)
from bench_http import Http, Inputs, fire, raw_request
from bench_report import Row


@dataclass
class Context:
    """What the scenarios share: a work directory, inputs, repetitions, durations."""

    workdir: Path
    inputs: Inputs
    reps: int
    duration: float
    quick: bool
    loops: dict[str, dict[str, Any]] = field(default_factory=dict)

    def text_request(self, port: int, name: str, index: int = 0) -> bytes:
        """Raw bytes of one POST of a sentence."""
        body = self.inputs.text_bodies[index].read_bytes()
        return raw_request(port, "POST", f"/models/{name}/predict", body, "application/json")

    def baseline_loop(self, name: str, threads: int | None = None) -> dict[str, Any]:
        """The in-process sequential loop of a model (run once per suite run, then reused).

        `threads`: torch intra-op threads (default: the server's default, cores - 1).
        """
        key = name if threads is None else f"{name}@{threads}"
        if key not in self.loops:
            with_threads = f", {threads} torch threads" if threads else ""
            progress(
                f"  in-process baseline: {name}, one input per call, {self.duration:g}s"
                + with_threads
            )
            kind = MODEL_KIND[name]
            job = {
                "mode": "loop",
                "task": MODELS[name]["task"],
                "dir": MODELS[name]["source"],
                "kind": kind,
                "files": [str(p) for p in self.inputs.files(kind)],
                "seconds": self.duration,
                "threads": threads,
            }
            result = measure_quietly(f"in-process {name}", [], lambda: inproc(job))
            lat = result.pop("latencies_s")
            # Medians over thirds of the run, as the server's figures are over wrk rounds.
            thirds = [lat[i * len(lat) // 3 : (i + 1) * len(lat) // 3] for i in range(3)]
            result.update(
                p50_ms=median(percentile(t, 50) for t in thirds) * 1e3,
                p99_ms=median(percentile(t, 99) for t in thirds) * 1e3,
                mean_ms=sum(lat) / len(lat) * 1e3,
                rate=median(len(t) / sum(t) for t in thirds),
            )
            self.loops[key] = result
        return self.loops[key]


# The kind of input (Inputs.files) each model of the warm and throughput scenarios gets.
MODEL_KIND = {"digits": "image", "langid": "text", "minilm": "sentence"}


def default_registry(hot: bool = True) -> dict[str, dict[str, Any]]:
    """The default models.yaml's entries (absolute sources)."""
    return {
        "digits": model("digits", hot=hot, batch=BATCH),
        "langid": model("langid", hot=hot, batch=BATCH),
        "minilm": model("minilm", batch=BATCH),
        "iris": model("iris"),
        "bert-memory-demo": model("bert-memory-demo", idle_ttl="10m"),
    }


# ---------------------------------------------------------------------- startup

BARE_APP = '''"""The startup baseline: a bare FastAPI app with one route, served by uvicorn."""
import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "live"}


if __name__ == "__main__":
    config = uvicorn.Config(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False
    )
    uvicorn.Server(config).run()
'''


def startup(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Process start -> /health/live 200: the registry vs. a bare FastAPI app."""
    bare = ctx.workdir / "bare_app.py"
    bare.write_text(BARE_APP)
    configs = {
        "registry": write_config(ctx.workdir, "startup-default", default_registry(hot=True)),
        "registry-lazy": write_config(ctx.workdir, "startup-lazy", default_registry(hot=False)),
    }
    times: dict[str, list[float]] = {"bare": [], "registry": [], "registry-lazy": []}
    others: dict[str, list[float]] = {k: [] for k in times}
    for rep in range(ctx.reps + 1):  # rep 0 warms the page cache and is discarded
        for variant in times:
            wait_quiet()
            if variant == "bare":
                port = free_port()
                log = ctx.workdir / f"bare-{port}.log"
                argv = [str(VENV_PY), str(bare), str(port)]
                server = Process(argv, log, port, server_env())
            else:
                server = start_server(configs[variant], f"startup-{variant}")
            try:
                with Interference([server.pid]) as other:
                    seconds = server.wait_status("/health/live")
            finally:
                server.stop()
            if rep:
                times[variant].append(seconds)
                others[variant].append(round(other.cores, 3))
        if rep:
            progress(
                f"  startup rep {rep}/{ctx.reps}: "
                + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items())
            )
    base = median(times["bare"])
    rows = [
        Row(
            "startup: default registry (2 hot models preloading)",
            median(times["registry"]) * 1e3,
            base * 1e3,
            "ms",
            "ratio",
            1.5,
        ),
        Row(
            "startup: registry, no hot models",
            median(times["registry-lazy"]) * 1e3,
            base * 1e3,
            "ms",
            "ratio",
            1.5,
        ),
    ]
    raw = {"seconds": times, "others_cores": others}
    return rows, raw


# -------------------------------------------------------------------- cold load


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
        "repeats": 3,
    }
    raw: dict[str, Any] = {
        "server_first": [],
        "server_warm": [],
        "server_cold": [],
        "server_load_seconds": [],
        "server_repeat_cold": [],
        "baseline": [],
        "admin_api": None,
    }
    for rep in range(ctx.reps):
        with start_server(config, "cold") as server:
            wait_ready(server)
            http = Http(server.port)
            request = ctx.text_request(server.port, "langid")
            wait_quiet([server.pid])
            (status, first), *_ = fire(server.port, [request])
            assert status == 200, f"cold request: {status}\n{server.tail()}"
            warm = median(fire(server.port, [request])[0][1] for _ in range(7))
            raw["server_first"].append(first)
            raw["server_warm"].append(warm)
            raw["server_cold"].append(first - warm)
            raw["server_load_seconds"].append(http.get("/models/langid")["load_seconds"])
            if raw["admin_api"] is None:
                raw["admin_api"] = admin_available(http, "langid")  # unloads langid if so
            if raw["admin_api"]:
                for _ in range(3):
                    status, _ = http.admin("langid", "unload")
                    wait_state(http, ["langid"], "unloaded")
                    (status, again), *_ = fire(server.port, [request])
                    assert status == 200
                    warm = median(fire(server.port, [request])[0][1] for _ in range(3))
                    raw["server_repeat_cold"].append(again - warm)
            http.close()
        wait_quiet()
        result = inproc(job)
        raw["baseline"].append(result)
        progress(
            f"  cold load rep {rep + 1}/{ctx.reps}: server {raw['server_cold'][-1] * 1e3:.0f} ms "
            f"(first {first * 1e3:.0f} - warm {raw['server_warm'][-1] * 1e3:.1f}; its own "
            f"load_seconds {raw['server_load_seconds'][-1] * 1e3:.0f}), "
            f"pipeline() {result['construct_s'] * 1e3:.0f} ms (first call "
            f"{result['first_call_s'] * 1e3:.1f}, warm {result['warm_call_s'] * 1e3:.1f})"
        )
    base = median(b["construct_s"] for b in raw["baseline"])
    with_call = median(
        b["construct_s"] + b["first_call_s"] - b["warm_call_s"] for b in raw["baseline"]
    )
    rows = [
        Row(
            "cold load: langid, first load in the process",
            median(raw["server_cold"]) * 1e3,
            base * 1e3,
            "ms",
            "ratio",
            1.2,
            note=f"server-side load_seconds {median(raw['server_load_seconds']) * 1e3:.0f} ms",
        ),
        Row(
            "cold load: same, baseline + its first-call extra (info)",
            median(raw["server_cold"]) * 1e3,
            with_call * 1e3,
            "ms",
            "ratio",
            None,
            note="baseline: pipeline() + (first call - warm call)",
        ),
    ]
    if raw["admin_api"]:
        repeat_base = median(x for b in raw["baseline"] for x in b["repeat_construct_s"])
        rows.append(
            Row(
                "cold load: langid, reload after an unload",
                median(raw["server_repeat_cold"]) * 1e3,
                repeat_base * 1e3,
                "ms",
                "ratio",
                1.2,
            )
        )
    return rows, raw
