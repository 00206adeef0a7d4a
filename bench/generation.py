"""Scenario `generation`: text generation over HTTP against in-process decoding.

The counter-gpt demo model. Rows (each against a baseline of the same run):
- time to first token of a streamed /v1/completions (max_tokens 1) vs an in-process
  start + one decoding step of the same loader (its own process), medians;
- tokens per second of 8 concurrent streams on one model vs one in-process stream;
- a switch between two copies of the model that do not fit together: the second model's
  first token (evicting the first) vs its cold first token when there is room.
`python -m bench.generation <model dir> <count>` is the in-process baseline (JSON out).
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.client import Http
from bench.context import Context
from bench.progress import progress
from bench.row import Row
from bench.servers import REPO, STORE, VENV_PY, ready_server, server_env, unload, write_config

PROMPT = "three four"
STREAMS = 8
STREAM_TOKENS = 200


def _entry(source: Path, **extra: Any) -> dict[str, Any]:
    return {"task": "text-generation", "source": str(source), "max_tokens": 1000, **extra}


def _first_token(port: int, name: str, max_tokens: int = 1) -> tuple[float, float, int]:
    """One streamed completion: (seconds to the first token event, to the end, tokens)."""
    body = json.dumps(
        {
            "model": name,
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"POST /v1/completions: {response.status} {response.read()!r}")
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            if b'"text":""' in line:
                continue
            tokens += 1
            if not first:
                first = time.perf_counter() - started
    finally:
        conn.close()
    return first, time.perf_counter() - started, tokens


def _concurrent(port: int, name: str) -> dict[str, Any]:
    counts: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        _, _, tokens = _first_token(port, name, STREAM_TOKENS)
        with lock:
            counts.append(tokens)

    threads = [threading.Thread(target=one) for _ in range(STREAMS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"tokens": sum(counts), "seconds": seconds, "rate": sum(counts) / seconds}


def _baseline(source: Path, count: int) -> dict[str, Any]:
    argv = [str(VENV_PY), "-m", "bench.generation", str(source), str(count)]
    out = subprocess.run(
        argv, capture_output=True, text=True, env=server_env(), cwd=REPO, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"baseline failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def generation(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """The three rows of the module docstring."""
    source = STORE / "counter-gpt"
    count = 30 if ctx.quick else 100
    raw: dict[str, Any] = {}
    base = ctx.quiet.measure("in-process generation", [], lambda: _baseline(source, count))
    raw["in_process"] = base
    copy = ctx.workdir / "counter-gpt-b"
    if not copy.exists():
        shutil.copytree(source, copy)
    models = {"gen": _entry(source, hot=True), "gen-b": _entry(copy)}
    size = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    config = write_config(ctx.workdir, "generation", models, memory_budget=int(size * 1.5))
    with ready_server(config, "generation") as server:
        http_ = Http(server.port)
        for _ in range(5):
            _first_token(server.port, "gen")  # warm up

        def ttft() -> dict[str, Any]:
            times = [_first_token(server.port, "gen")[0] for _ in range(count)]
            return {"ttft_ms": statistics.median(times) * 1e3}

        raw["http"] = ctx.quiet.measure("generation ttft", [server.pid], ttft)
        raw["concurrent"] = ctx.quiet.measure(
            "generation 8 streams", [server.pid], lambda: _concurrent(server.port, "gen")
        )
        switches: list[float] = []
        colds: list[float] = []
        for _ in range(ctx.reps):
            _first_token(server.port, "gen")  # gen loaded, gen-b not: the switch evicts gen
            switches.append(_first_token(server.port, "gen-b")[0])
            unload(http_, "gen-b")
            unload(http_, "gen")  # room for gen-b: its cold first token, nothing to evict
            colds.append(_first_token(server.port, "gen-b")[0])
            unload(http_, "gen-b")
        raw["switch"] = {"switch_s": switches, "cold_s": colds}
        progress(
            f"  ttft {raw['http']['ttft_ms']:.2f} ms vs {base['ttft_ms']:.2f} ms in process; "
            f"8 streams {raw['concurrent']['rate']:.0f} tok/s vs {base['rate']:.0f}; "
            f"switch {statistics.median(switches):.3f} s vs cold {statistics.median(colds):.3f} s"
        )
    rows = [
        Row(
            scenario="generation: time to first token, HTTP stream vs in-process step",
            measured=raw["http"]["ttft_ms"],
            baseline=base["ttft_ms"],
            unit="ms",
            compare="delta",
            target=5.0,
        ),
        Row(
            scenario=f"generation: tokens/s of {STREAMS} concurrent streams vs one in-process",
            measured=raw["concurrent"]["rate"],
            baseline=base["rate"],
            unit="tok/s",
            compare="ratio",
            target=2.0,
            higher_is_better=True,
            note="streams batched per token: one forward pass over their padded KV caches",
        ),
        Row(
            scenario="generation: first token after a switch vs cold first token with room",
            measured=statistics.median(switches),
            baseline=statistics.median(colds),
            unit="s",
            compare="ratio",
            target=1.3,
        ),
    ]
    return rows, raw


def _in_process(source: Path, count: int) -> dict[str, Any]:
    """Load with the server's loader; time start + one step, and one long stream."""
    from registry.config.schema import ModelSpec
    from registry.generation import GenerateRequest, run_to_end
    from registry.loaders import LoadContext, load_model
    from registry.sources import resolve_source

    spec = ModelSpec(task="text-generation", source=str(source), max_tokens=1000)
    ctx = LoadContext("gen", spec, resolve_source(spec.source, source.parent), source.parent)
    model: Any = load_model(ctx)
    one = GenerateRequest(prompt=PROMPT, max_tokens=1, temperature=0)
    for _ in range(5):
        run_to_end(model.start(one))
    times = []
    for _ in range(count):
        started = time.perf_counter()
        generation = model.start(one)
        generation.advance()
        times.append(time.perf_counter() - started)
    long = GenerateRequest(prompt=PROMPT, max_tokens=STREAM_TOKENS, temperature=0)
    started = time.perf_counter()
    _, last = run_to_end(model.start(long))
    seconds = time.perf_counter() - started
    return {
        "ttft_ms": statistics.median(times) * 1e3,
        "rate": last.completion_tokens / seconds,
        "tokens": last.completion_tokens,
    }


if __name__ == "__main__":
    print(json.dumps(_in_process(Path(sys.argv[1]), int(sys.argv[2]))))
