"""The trace benchmark's peer: Ray Serve's own model multiplexing on the same Zipf trace.

    .venv/bin/python -m bench.trace_ray [--clients 8] [--requests 300] [--registry-runs 2]

The 12 models and the trace of bench/trace.py (zipf, seed 8), 8 closed-loop clients. The
peer is one Ray Serve replica whose `@serve.multiplexed` loader loads the same models with
the registry's own loaders (so a load costs the same); Ray's cache counts models, not bytes,
so it keeps as many models as the budget holds on average (the budget over the models' mean
size, rounded: 4). Clients call the deployment through a `DeploymentHandle` from the driver
(no HTTP on either side: the registry side replays in process, like bench/trace_run.py).
Ray runs only inside a loopback-only network namespace: this module re-runs itself under
`unshare -n` (`--inner`), as bench/ray_scale.py does, and stops Ray and its process group.
The registry side is replayed in this process before and after, with bench/trace_run.py.
Prints one JSON line per side with loads, throughput, p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.servers import REPO, server_env

TEXT = "a short sentence to embed"


def _figures(latencies: list[float], wall: float, loads: int, errors: int) -> dict[str, Any]:
    """The same figures (and percentile rule) as bench/trace_run.py."""
    ordered = sorted(latencies)
    n = len(ordered)
    return {
        "loads": loads,
        "throughput": round(n / wall, 2),
        "p50_ms": round(ordered[n // 2] * 1e3, 1),
        "p99_ms": round(ordered[min(n - 1, int(n * 0.99))] * 1e3, 1),
        "errors": errors,
    }


# ------------------------------------------------------------- inside the namespace


def inner(job: dict[str, Any]) -> dict[str, Any]:
    """Start Ray here, serve the multiplexing peer, replay the trace, stop Ray."""
    import ray
    from ray import serve

    max_models = int(job["max_models"])
    clients = int(job["clients"])

    class Peer:
        """One replica: Ray's multiplexed LRU cache of at most `max_models` models."""

        def __init__(self, config: str, warm_dir: str) -> None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from bench.trace_run import warm_imports
            from registry.config.file import load_config

            self.config = load_config(Path(config))
            self.loads = 0
            warm_imports(Path(warm_dir))

        def _load(self, name: str) -> Any:
            from registry.loaders import LoadContext, load_model

            config = self.config
            spec = config.models[name]
            ctx = LoadContext(name, spec, config.source_of(name), config.base_dir)
            return Held(load_model(ctx))

        @serve.multiplexed(max_num_models_per_replica=max_models)  # type: ignore[untyped-decorator]
        async def get_model(self, model_id: str) -> Any:
            self.loads += 1
            return await asyncio.to_thread(self._load, model_id)

        async def __call__(self, text: str) -> Any:
            held = await self.get_model(serve.get_multiplexed_model_id())
            return await asyncio.to_thread(held.model.predict, [text], {})

        def load_count(self) -> int:
            return self.loads

    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        _temp_dir=job["ray_dir"],
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8000})
        deployment = serve.deployment(
            name="Peer", max_ongoing_requests=2 * clients, ray_actor_options={"num_cpus": 0}
        )(Peer)
        trace: list[str] = job["trace"]
        results = []
        for run in range(int(job["runs"])):  # a fresh replica (an empty cache) per replay
            app = deployment.bind(job["config"], job["warm_dir"])
            handle = serve.run(app, name=f"peer{run}", route_prefix="/")
            results.append(asyncio.run(_replay(handle, trace, clients)))
            serve.delete(f"peer{run}")
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    return {"runs": results}


async def _replay(handle: Any, trace: list[str], clients: int) -> dict[str, Any]:
    """The trace with `clients` closed-loop clients through the deployment's handle."""
    requests = iter(trace)
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        for name in requests:
            started = time.perf_counter()
            try:
                await handle.options(multiplexed_model_id=name).remote(TEXT)
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    loads = await handle.load_count.remote()
    return _figures(latencies, wall, int(loads), errors)


class Held:
    """A loaded model as Ray's cache holds it: Ray calls `__del__` when it evicts one."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._closed = False

    def __del__(self) -> None:
        if not self._closed:
            self._closed = True
            self.model.close()


# ---------------------------------------------------------------- outside


def run_peer(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run `inner` under `unshare -n` (lo only) and read its JSON."""
    from app.ray.local import unshare_command

    ray_dir = Path(tempfile.mkdtemp(prefix="mr-tray-", dir="/tmp")) / "r"
    out = workdir / "trace-ray.json"
    job = {**job, "ray_dir": str(ray_dir)}
    (workdir / "trace-ray-job.json").write_text(json.dumps(job))
    command = [
        *unshare_command(),
        "sh",
        "-c",
        'ip link set lo up && exec "$@"',
        "sh",
        sys.executable,
        "-m",
        "bench.trace_ray",
        "--inner",
        str(workdir / "trace-ray-job.json"),
        str(out),
    ]
    process = subprocess.Popen(command, cwd=REPO, env=server_env(), start_new_session=True)
    try:
        code = process.wait(timeout=1800)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything of Ray's left in the group
        shutil.rmtree(ray_dir.parent, ignore_errors=True)
    if code != 0:
        raise RuntimeError(f"the Ray peer process exited with {code}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def registry_side(
    config: Path, job: dict[str, Any], runs: int, code: Path | None = None
) -> list[dict[str, Any]]:
    """The registry's replays by bench/trace_run.py (in a process of its own, like the
    suite's); `code`: another checkout's registry/."""
    replays = [
        {"label": "registry", "trace": "zipf", "clients": job["clients"], "config": str(config)}
    ] * runs
    task = {"runs": replays, "traces": {"zipf": job["trace"]}, "warm_dir": job["warm_dir"]}
    env = server_env()
    if code is not None:
        env["TRACE_CODE_ROOT"] = str(code)
    out = subprocess.run(
        [sys.executable, "-m", "bench.trace_run", "run", json.dumps(task)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        check=True,
        timeout=1800,
    )
    results: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return [
        {k: r[k] for k in ("loads", "throughput", "p50_ms", "p99_ms")}
        | {"errors": sum(r["errors"].values())}
        for r in results
    ]


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("loads", "throughput", "p50_ms", "p99_ms", "errors")
    return {
        k: {"median": statistics.median(r[k] for r in runs), "all": [r[k] for r in runs]}
        for k in keys
    }


def main(argv: list[str] | None = None) -> int:
    """Build the models, replay the registry side, the Ray peer, the registry side again."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--inner":
        job = json.loads(Path(argv[1]).read_text())
        Path(argv[2]).write_text(json.dumps(inner(job)))
        return 0
    from bench.trace import BUDGET_SHARE, SEED, build_models, write_config
    from bench.trace_sim import make_traces

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--policy", default="cost")
    parser.add_argument("--registry-runs", type=int, default=2, help="before and after Ray each")
    parser.add_argument("--ray-runs", type=int, default=2)
    parser.add_argument("--models", type=Path, help="a directory of built BERTs to reuse")
    parser.add_argument("--code", type=Path, help="also replay this checkout's registry/")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="model-registry-tray-") as tmp:
        workdir = Path(tmp)
        models = args.models or workdir / "models"
        entries, sizes = build_models(models)
        budget = int(sum(sizes.values()) * BUDGET_SHARE)
        max_models = max(1, round(budget / statistics.mean(sizes.values())))
        config = write_config(workdir, args.policy, entries, budget)
        trace = make_traces(list(entries), args.requests, SEED)["zipf"]
        job = {
            "config": str(config),
            "warm_dir": str(models / "bert-8m"),
            "trace": trace,
            "clients": args.clients,
            "max_models": max_models,
            "runs": args.ray_runs,
        }
        registry = registry_side(config, job, args.registry_runs)
        old = [] if args.code is None else registry_side(config, job, args.registry_runs, args.code)
        peer = run_peer(job, workdir)["runs"]
        registry += registry_side(config, job, args.registry_runs)
        if args.code is not None:
            old += registry_side(config, job, args.registry_runs, args.code)
            print(json.dumps({"side": f"registry ({args.code})", **_median(old)}))
    print(json.dumps({"side": "registry", "policy": args.policy, **_median(registry)}))
    print(json.dumps({"side": "ray", "max_models": max_models, **_median(peer)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
