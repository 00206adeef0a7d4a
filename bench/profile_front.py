"""Where the front's time goes per request: py-spy on a server under wrk load, by category.

    .venv/bin/python -m bench.profile_front [--seconds 20] [--rate 200] [--out DIR]

Not a scenario of the suite (it reports no ratio): a tool for docs/benchmarks.md. One server
serves digits, langid and minilm (hot, batching 32/5ms, as in models.yaml); for each model,
wrk -c16 runs while py-spy samples every thread (`--threads`, Python frames only, idle
samples dropped). The server's event-loop thread is its main thread: its samples are
classified by the innermost frame that belongs to a known part of the path (CATEGORIES), and
its CPU time (/proc/<pid>/task/<tid>/stat) is divided by the requests served, so that each
category's share becomes microseconds of loop time per request.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.context import MODEL_KIND
from bench.inputs import Inputs
from bench.servers import BATCH, VENV_PY, model, ready_server, write_config
from bench.wrk import run_wrk, wrk_script

# (category, regex on "function (file:line)") in the order they are tried on each frame,
# innermost frame first; the first frame that matches any rule names the sample's category.
CATEGORIES: list[tuple[str, str]] = [
    ("logging", r"\(.*/logging/"),
    (
        "metrics and stats",
        r"\(registry/stats\.py|\(app/(metrics|prometheus_text)\.py|prometheus_client",
    ),
    ("number checks", r"check_numbers|_ODD_NUMBER"),
    ("multipart parsing", r"\(.*(multipart/|python_multipart/|starlette/formparsers\.py)"),
    (
        "JSON body: parse + pydantic",
        r"\(.*pydantic/main|_read_json|\(.*json/decoder|orjson|msgspec",
    ),
    (
        "response: encode + headers + send",
        r"jsonable_encoder|serialize_response|dump_json|\(.*json/encoder|starlette/responses\.py"
        r"|\(app/errors\.py|RequestResponseCycle\.send",
    ),
    ("disconnect watcher", r"unless_disconnected|watch \(app/http/routes"),
    ("batcher", r"\(registry/batching\.py"),
    (
        "thread hops (pool, futures across threads)",
        r"\(registry/threads\.py|concurrent/futures|wrap_future|_chain_future"
        r"|call_soon_threadsafe|_copy_future_state|_set_state",
    ),
    ("admission, manager, lifecycle", r"\(registry/"),
    ("routes (app/)", r"\(app/"),
    ("body reading", r"starlette/requests\.py"),
    (
        "FastAPI endpoint: DI, params, response model",
        r"fastapi/(dependencies/|routing\.py.*(get_request_handler|run_endpoint|solve))",
    ),
    ("routing + middleware stack", r"\(.*(fastapi/|starlette/|uvicorn/middleware)"),
    ("uvicorn HTTP protocol (httptools)", r"\(.*uvicorn/"),
    ("asyncio primitives (tasks, locks, wait_for)", r"\(.*asyncio/(?!runners)"),
    ("event loop in C (uvloop: I/O, callbacks, task steps)", r"\(.*(asyncio/runners|uvloop)"),
]
_COMPILED = [(name, re.compile(rx)) for name, rx in CATEGORIES]


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, rx in _COMPILED:
            if rx.search(frame):
                return name
    return "other"


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` (utime + stime)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def _parse(raw: Path, main_tid: int) -> tuple[Counter[str], dict[int, str], int]:
    """Main-thread samples by category, the threads' names by native id, and the total."""
    loop: Counter[str] = Counter()
    names: dict[int, str] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        thread, *frames = stack.split(";")
        found = re.match(r"thread \((\d+)\): (.*)", thread)
        if found:
            names[int(found.group(1))] = re.sub(r"-\d+$", "", found.group(2))
        if "MainThread" in thread or f"({main_tid})" in thread:
            loop[_category(frames)] += count
    return loop, names, total


def profile_model(
    server_pid: int, port: int, name: str, script: Path, seconds: float, rate: int, out: Path
) -> dict[str, Any]:
    """wrk -c16 on `name` while py-spy records; the loop's time per request by category."""
    raw = out / f"{name}.txt"
    run_wrk(port, name, script, 2.0, 16)  # warm-up
    before = _thread_cpu(server_pid)
    spy = subprocess.Popen(
        [
            str(VENV_PY.parent / "py-spy"),
            "record",
            "--pid",
            str(server_pid),
            "--rate",
            str(rate),
            "--threads",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--duration",
            str(int(seconds) + 1),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result = run_wrk(port, name, script, seconds, 16)
    after = _thread_cpu(server_pid)
    spy.wait()
    main_cpu = after.get(server_pid, 0.0) - before.get(server_pid, 0.0)
    all_cpu = sum(after.values()) - sum(v for k, v in before.items() if k in after)
    loop, names, total = _parse(raw, server_pid)
    requests = result["requests"]
    by_thread: Counter[str] = Counter()
    for tid, cpu in after.items():
        thread_name = "MainThread (event loop)" if tid == server_pid else names.get(tid, "unnamed")
        by_thread[thread_name] += (cpu - before.get(tid, 0.0)) / requests * 1e6
    loop_samples = sum(loop.values())
    us_per_req = main_cpu / requests * 1e6
    return {
        "model": name,
        "rps": result["rps"],
        "requests": requests,
        "p50_ms": result["latency_us"]["p50"] / 1e3,
        "loop_cpu_us_per_req": us_per_req,
        "process_cpu_us_per_req": all_cpu / requests * 1e6,
        "loop_samples": loop_samples,
        "samples": total,
        "categories": {
            k: {"share": v / loop_samples, "us_per_req": us_per_req * v / loop_samples}
            for k, v in loop.most_common()
        },
        "cpu_us_per_req_by_thread": {k: round(v) for k, v in by_thread.most_common() if v >= 1},
    }


def main() -> None:
    """Profile digits, langid and minilm in one server; print and save the breakdown."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_front")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--models", default="digits,langid,minilm")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="profile-front-"))
    out.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    inputs = Inputs(out / "inputs")
    config = write_config(out, "profile", {n: model(n, hot=True, batch=BATCH) for n in names})
    results = []
    with ready_server(config, "profile") as server:
        for name in names:
            kind = MODEL_KIND[name]
            script = wrk_script(out, kind, inputs.files(kind))
            res = profile_model(server.pid, server.port, name, script, args.seconds, args.rate, out)
            results.append(res)
            print(
                f"\n{name}: {res['rps']:.0f} req/s, p50 {res['p50_ms']:.2f} ms, loop CPU "
                f"{res['loop_cpu_us_per_req']:.0f} us/req (process "
                f"{res['process_cpu_us_per_req']:.0f} us/req)"
            )
            for cat, v in res["categories"].items():
                print(f"  {cat:32s} {v['share'] * 100:5.1f}%  {v['us_per_req']:6.0f} us")
            print(f"  CPU us per request by thread: {res['cpu_us_per_req_by_thread']}")
    (out / "profile.json").write_text(json.dumps(results, indent=2))
    print(f"\nraw stacks and profile.json in {out}")


if __name__ == "__main__":
    main()
