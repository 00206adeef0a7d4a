"""Scenario `ray`: the registry on Ray Serve with 1, 2 and 3 replicas, on a Zipf(1.0) trace.

12 fake-loader models of 100 MB (loads take 50 ms), 400 MB per replica: the models total three
replica budgets. The same trace runs against 1, 2 and 3 replicas (throughput, loads per 1000
requests, p99) and, as the baseline, against one in-process registry with a 1200 MB budget.
Target: 3 replicas cause at most 10% more loads than that single big registry.

Ray runs only inside a loopback-only network namespace: the scenario re-runs this module under
`unshare -n` (`python -m bench.ray_scale --inner`), which starts Ray, serves each replica count
in turn, and prints JSON; Ray is stopped by that process (`ray.shutdown()`), and its process
group afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from bench.context import Context
from bench.progress import progress
from bench.row import Row
from bench.servers import REPO
from bench.stats import percentile

MODELS = 12
SIZE_MB = 100
REPLICA_BUDGET_MB = 400  # 12 x 100 MB = 3 replica budgets
CONCURRENCY = 8


def trace(requests: int, seed: int = 12) -> list[str]:
    """Model names drawn from Zipf(1.0) over the models (rank 1 the most popular)."""
    rng = random.Random(seed)
    weights = [1 / rank for rank in range(1, MODELS + 1)]
    names = [f"m{i:02d}" for i in range(MODELS)]
    return rng.choices(names, weights=weights, k=requests)


def write_config(directory: Path, budget_mb: int) -> Path:
    """models.yaml with the 12 fake models and a budget."""
    models = {
        f"m{i:02d}": {
            "loader": "fake",
            "options": {"size": f"{SIZE_MB}MB", "load_seconds": 0.05, "predict_seconds": 0.001},
        }
        for i in range(MODELS)
    }
    document = {"server": {"memory_budget": f"{budget_mb}MB"}, "models": models}
    path = directory / f"bench-ray-{budget_mb}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# ------------------------------------------------------------- inside the namespace


def drive(url: str, names: list[str]) -> dict[str, Any]:
    """Send the trace with CONCURRENCY clients; returns wall time, latencies, statuses."""
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    chunks = [names[k::CONCURRENCY] for k in range(CONCURRENCY)]

    def run(chunk: list[str]) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for name in chunk:
                t0 = time.perf_counter()
                status = http.post(f"/models/{name}/predict", json={"inputs": "x"}).status_code
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.perf_counter() - started, "latencies": latencies, "statuses": statuses}


def inner(requests: int, replica_counts: list[int], ray_dir: Path) -> dict[str, Any]:
    """Start Ray here (in the namespace), run the trace per replica count, stop Ray."""
    import httpx
    import ray
    from ray import serve

    from app.ray.gateway import build_app

    config = write_config(ray_dir.parent, REPLICA_BUDGET_MB)
    names = trace(requests)
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        _temp_dir=str(ray_dir),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    results: dict[str, Any] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8000})
        for count in replica_counts:
            name = f"bench{count}"
            serve.run(
                build_app({"config": str(config), "replicas": count}),
                name=name,
                route_prefix="/",
            )
            url = "http://127.0.0.1:8000"
            run = drive(url, names)
            view = httpx.get(f"{url}/models", timeout=30).json()
            run["loads"] = sum(m["load_count"] for m in view["models"])
            run["replicas"] = len(view["replicas"])
            results[str(count)] = run
            serve.delete(name)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    return results


def single_registry(requests: int, directory: Path) -> dict[str, Any]:
    """The baseline: one in-process registry with three replicas' budget, same trace."""
    from registry.config.file import load_config
    from registry.manager import ModelManager
    from registry.payload import TextRequest

    config = load_config(write_config(directory, 3 * REPLICA_BUDGET_MB))
    names = trace(requests)

    async def main() -> dict[str, Any]:
        manager = ModelManager(config)
        await manager.start()
        queue = list(reversed(names))
        latencies: list[float] = []

        async def client() -> None:
            while queue:
                name = queue.pop()
                t0 = time.perf_counter()
                await manager.predict(name, TextRequest(inputs="x", parameters={}))
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        seconds = time.perf_counter() - started
        loads = sum(m.load_count for m in manager.snapshot().models)
        await manager.shutdown(drain_timeout=5)
        return {"seconds": seconds, "latencies": latencies, "loads": loads}

    return asyncio.run(main())


# ---------------------------------------------------------------- the scenario


def run_isolated(requests: int, replica_counts: list[int], workdir: Path) -> dict[str, Any]:
    """Run `inner` under `unshare -n` (lo only) and read its JSON."""
    from app.ray.local import unshare_command

    ray_dir = Path(tempfile.mkdtemp(prefix="mr-bray-", dir="/tmp")) / "r"
    out = workdir / "bench-ray.json"
    command = [
        *unshare_command(),
        "sh",
        "-c",
        'ip link set lo up && exec "$@"',
        "sh",
        sys.executable,
        "-m",
        "bench.ray_scale",
        "--inner",
        "--requests",
        str(requests),
        "--replicas",
        ",".join(map(str, replica_counts)),
        "--ray-dir",
        str(ray_dir),
        "--out",
        str(out),
    ]
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True)
    try:
        code = process.wait(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything of Ray's left in the group
        shutil.rmtree(ray_dir.parent, ignore_errors=True)
    if code != 0:
        raise RuntimeError(f"the Ray benchmark process exited with {code}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _rows(
    per_k: dict[int, float], base_per_k: float, rps: dict[int, float], p99: dict[int, float]
) -> list[Row]:
    """Loads per 1000 requests against the single registry; throughput and p99 against 1."""
    loads = "loads/1k"
    rows = [
        Row(
            "ray: loads/1000 req, 3 replicas vs one registry with 3x budget",
            per_k[3],
            base_per_k,
            loads,
            "ratio",
            1.1,
        ),
    ]
    for k in (1, 2):
        label = f"ray: loads/1000 req, {k} replica(s) vs that registry"
        rows.append(Row(label, per_k[k], base_per_k, loads, "ratio", None))
    for k in (2, 3):
        label = f"ray: throughput, {k} replicas vs 1"
        rows.append(Row(label, rps[k], rps[1], "req/s", "ratio", None, higher_is_better=True))
        rows.append(Row(f"ray: p99, {k} replicas vs 1", p99[k], p99[1], "ms", "ratio", None))
    return rows


def ray_scale(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Scenario `ray`: loads, throughput and p99 with 1, 2 and 3 replicas vs. one registry."""
    requests = 600 if ctx.quick else 1500
    counts = [1, 2, 3]
    progress(f"ray: {requests} Zipf(1.0) requests over {MODELS} models; replicas {counts}")
    runs = run_isolated(requests, counts, ctx.workdir)
    base = single_registry(requests, ctx.workdir)
    per_k = {k: 1000 * runs[str(k)]["loads"] / requests for k in counts}
    rps = {k: requests / runs[str(k)]["seconds"] for k in counts}
    p99 = {k: 1000 * percentile(runs[str(k)]["latencies"], 99) for k in counts}
    raw = {
        "requests": requests,
        "loads": {str(k): runs[str(k)]["loads"] for k in counts},
        "baseline_loads": base["loads"],
        "rps": {str(k): rps[k] for k in counts},
        "p99_ms": {str(k): p99[k] for k in counts},
        "statuses": {str(k): runs[str(k)]["statuses"] for k in counts},
    }
    progress(f"ray: {json.dumps(raw)}")
    return _rows(per_k, 1000 * base["loads"] / requests, rps, p99), raw


def main() -> int:
    """`--inner`: the part that runs in the namespace."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--inner", action="store_true", required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--replicas", required=True)
    parser.add_argument("--ray-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    counts = [int(k) for k in args.replicas.split(",")]
    result = inner(args.requests, counts, args.ray_dir)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
