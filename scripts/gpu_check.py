"""Check the registry's GPU promises on real hardware and print the figures (scripts/gpu_check.sh).

What it does, on the first GPU (cuda:0), with a real model (default: the BERT memory demo,
~266 MB, from ./model-store; scripts/setup.sh builds it):

1. Budgets per device: each GPU's total memory and the budget it gets by default.
2. Tracked vs NVML: a server with the model twice on `device: cuda:0` (one in the server's
   process, one in a worker process); after sustained traffic, the bytes the registry tracks
   beside what NVML reports for the server's processes on the GPU. Then each model is
   unloaded and the VRAM it gave back is read on the GPU.
3. Warm p50: sequential requests to the server's GPU model, against the same model's
   `predict` called in this process (the same loader, no HTTP).
4. The host-RAM tier: reload from host memory against a cold load, through the server. A
   second copy of the thread model is added by a reload of models.yaml, with a GPU budget
   that holds one of the two: loading it evicts the first into host memory (`offloaded`),
   and the next request for the first restores it by a copy. Its request time and the
   restore's own time (/metrics) are put beside the first model's load from disk. Measured
   in this process too: a host-to-device copy of the weights against a load from disk.
5. Exit: SIGTERM, the exit code and seconds, and the VRAM the server's processes still hold
   on the GPU afterwards (0 MiB expected).

Per-device figures come from GET /models' `devices` (each device's tracked bytes, a worker's
whole footprint included, and the server's own overhead). The tier's figures need a GPU:
with `--host-dry-run` they say "n/a on the host".

On a machine without a GPU it prints "no GPU found: ..." and exits 0. `--host-dry-run` runs
every step on the host instead (no VRAM figures), to check the script itself on a CPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devkit, run from anywhere

from devkit.demo import REPO, STORE
from devkit.server import Process, environ, serve
from registry.memory.device_budgets import DEFAULT_GPU_SHARE
from registry.memory.device_usage import device_used, nvml_process_bytes
from registry.memory.devices import Device, discover, nvml
from registry.units import format_bytes

MIB = 1024 * 1024
TOKEN = "gpu-check"
ON_HOST = "n/a on the host (the host-RAM tier keeps models evicted from a GPU)"
MODELS = {
    "bert-memory-demo": ("sentence-embeddings", "a test sentence for the GPU check"),
    "langid-bert": ("text-classification", "Der schnelle braune Fuchs springt."),
}


# ------------------------------------------------------------------------ finding GPUs


def why_no_gpu() -> str:
    """What NVML and torch said, for the "no GPU found" message."""
    reasons = []
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        reasons.append("NVML: nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    else:
        reasons.append(
            "NVML: no NVIDIA driver answered" if nvml() is None else "NVML: no GPU listed"
        )
    try:
        import torch
    except ImportError:
        reasons.append("torch is not installed")
    else:
        if torch.version.cuda is None:
            reasons.append(f"torch {torch.__version__} is a CPU-only build")
        else:
            reasons.append(
                f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU "
                "(torch.cuda.is_available() is False)"
            )
    return "; ".join(reasons)


# --------------------------------------------------------------------------- reporting


class Report:
    """The figures, printed as they come and kept for --json."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}

    def section(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def add(self, key: str, value: Any, text: str | None = None) -> None:
        self.figures[key] = value
        print(f"  {key}: {text if text is not None else value}", flush=True)


def mib(nbytes: int | None) -> str:
    return "unknown" if nbytes is None else f"{nbytes / MIB:,.0f} MiB"


def p50_ms(samples: Sequence[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def timed(calls: int, call: Callable[[], object]) -> list[float]:
    """Seconds each of `calls` sequential calls took (after 10 warm-up calls)."""
    for _ in range(10):
        call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


# ---------------------------------------------------------------------- the server part


def write_config(
    folder: Path, model: str, task: str, device: str, gpu_budget: int | None = None
) -> Path:
    """The check's models.yaml; with `gpu_budget`, that budget on `device` and a second
    thread model of the same files (the host-RAM tier's check)."""
    source = STORE / model
    path = folder / "models.yaml"
    budget = "8GiB" if gpu_budget is None else f"{{cpu: 8GiB, {device}: {gpu_budget}}}"
    second = (
        ""
        if gpu_budget is None
        else f"  in-server-2: {{task: {task}, source: {source}, device: {device}, "
        "isolation: thread}\n"
    )
    path.write_text(
        f"server:\n  memory_budget: {budget}\n  watch: false\n  load_timeout: 10m\n"
        "  request_timeout: 10m\nmodels:\n"
        f"  in-server: {{task: {task}, source: {source}, device: {device}, isolation: thread}}\n"
        f"  in-worker: {{task: {task}, source: {source}, device: {device}, isolation: process}}\n"
        f"{second}"
    )
    return path


def server_pids(server: Process, body: dict[str, Any]) -> dict[str, int]:
    """The server's pid and each loaded process model's worker pid, by model."""
    pids = {"server": server.pid}
    for entry in body["models"]:
        if isinstance(entry.get("worker_pid"), int):
            pids[entry["name"]] = entry["worker_pid"]
    return pids


def gpu_bytes(gpu: Device | None, pids: dict[str, int]) -> dict[str, int] | None:
    """NVML's used VRAM per process of the server (None without NVML, or on the host)."""
    if gpu is None:
        return None
    found = nvml_process_bytes(gpu, pids.values())
    if found is None:
        return None
    return {name: found.get(pid, 0) for name, pid in pids.items()}


def unloaded(client: httpx.Client, name: str) -> bool:
    return bool(client.get(f"/models/{name}").json()["state"] == "unloaded")


def in_state(client: httpx.Client, name: str, state: str) -> bool:
    return bool(client.get(f"/models/{name}").json()["state"] == state)


def metric_sum(client: httpx.Client, name: str, model: str) -> float | None:
    """A sample of /metrics for one model (None when it is not there)."""
    prefix = f'{name}{{model="{model}"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def tier_checks(
    report: Report,
    server: Process,
    client: httpx.Client,
    headers: dict[str, str],
    gpu: Device,
    folder: Path,
    model: str,
    text: str,
) -> None:
    """Evict the loaded in-server into host memory (a second copy that does not fit beside
    it on the GPU), then time the request that restores it against its load from disk."""
    task = MODELS[model][0]
    body = client.get("/models").json()
    entry = {m["name"]: m for m in body["models"]}["in-server"]
    cold = entry["load_seconds"]  # section 3's load (files cached, imports done)
    device = {d["device"]: d for d in body["devices"]}[gpu.name]
    weights = (entry.get("device_bytes") or {}).get(gpu.name) or entry["size_bytes"] or 0
    # Room for in-server and half of another: in-server-2's load must evict in-server.
    budget = device["overhead_bytes"] + device["used_bytes"] + weights // 2
    write_config(folder, model, task, gpu.name, gpu_budget=budget)
    client.post("/admin/reload", headers=headers).raise_for_status()
    client.post("/models/in-server-2/predict", json={"inputs": text}).raise_for_status()
    offloaded = functools.partial(in_state, client, "in-server", "offloaded")
    try:
        server.wait_until(offloaded, "in-server offloaded", timeout=120)
    except Exception as exc:  # reported, not raised: the other checks go on
        state = client.get("/models/in-server").json()["state"]
        report.add("server_reload_from_host_seconds", None, f"not offloaded ({state}): {exc}")
        return
    host = client.get("/models/in-server").json()
    report.add("offloaded_host_bytes", host["held_bytes"], mib(host["held_bytes"]))
    started = time.perf_counter()
    client.post("/models/in-server/predict", json={"inputs": text}).raise_for_status()
    took = time.perf_counter() - started
    restored = client.get("/models/in-server").json()
    copy = metric_sum(client, "model_registry_restore_duration_seconds_sum", "in-server")
    report.add("server_cold_load_seconds", cold, f"{cold:.3f} s (in-server's load from disk)")
    report.add(
        "server_reload_from_host_seconds",
        round(took, 3),
        f"{took:.3f} s (the request that restored it; state now {restored['state']})",
    )
    if copy is not None:
        report.add("server_restore_copy_seconds", round(copy, 3), f"{copy:.3f} s (/metrics)")
    ratio = took / cold if cold else None
    report.add(
        "server_reload_over_cold_load",
        None if ratio is None else round(ratio, 3),
        "n/a" if ratio is None else f"{ratio:.3f}x (target: <= 0.3x)",
    )


def server_checks(
    report: Report, gpu: Device | None, model: str, text: str, requests: int, folder: Path
) -> None:
    task = MODELS[model][0]
    device = "cpu" if gpu is None else gpu.name
    config = write_config(folder, model, task, device)
    env = environ(MODEL_REGISTRY_ADMIN_TOKEN=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        serve(config, env=env, label="gpu-check") as server,
        httpx.Client(base_url=server.url, timeout=600) as client,
    ):
        server.wait_live(timeout=300)
        for name in ("in-server", "in-worker"):
            client.post(f"/models/{name}/predict", json={"inputs": text}).raise_for_status()

        report.section("2. tracked vs NVML, after sustained traffic")
        for _ in range(requests):
            for name in ("in-server", "in-worker"):
                client.post(f"/models/{name}/predict", json={"inputs": text}).raise_for_status()
        body = client.get("/models").json()
        pids = server_pids(server, body)
        tracked = {m["name"]: m["size_bytes"] for m in body["models"]}
        report.add("tracked_used_bytes", body["used_bytes"], mib(body["used_bytes"]))
        for name, nbytes in tracked.items():
            report.add(f"tracked_{name}_bytes", nbytes, mib(nbytes))
        seen = gpu_bytes(gpu, pids)
        if seen is None:
            reason = "on the host" if gpu is None else "NVML is missing or hides per-process use"
            report.add("nvml_bytes", None, f"unknown ({reason})")
        else:
            for name, nbytes in seen.items():
                report.add(f"nvml_{name}_bytes", nbytes, f"{mib(nbytes)} (pid {pids[name]})")
            total = sum(seen.values())
            hint = ""
            if total == 0:
                hint = " (NVML lists none of this server's pids: a container's pid namespace?)"
            report.add("nvml_total_bytes", total, mib(total) + hint)
            ratio = total / body["used_bytes"] if body["used_bytes"] else None
            report.add(
                "nvml_over_tracked",
                None if ratio is None else round(ratio, 2),
                "n/a" if ratio is None else f"{ratio:.2f}x (target: within 10%, i.e. <= 1.10x)",
            )
        for device in body.get("devices", []):  # each device's budget and what it tracks
            name, held = device["device"], device["used_bytes"]
            report.add(
                f"tracked_{name}_used_bytes",
                held,
                f"{mib(held)} of {mib(device['budget_bytes'])} "
                f"(overhead {mib(device['overhead_bytes'])})",
            )
        gpu_name = gpu.name if gpu is not None else None
        on_gpu = [d for d in body.get("devices", []) if d["device"] == gpu_name]
        if on_gpu and seen is not None:
            charged = on_gpu[0]["used_bytes"] + on_gpu[0]["overhead_bytes"]
            ratio = sum(seen.values()) / charged if charged else None
            report.add(
                "nvml_over_tracked_gpu",
                None if ratio is None else round(ratio, 2),
                "n/a"
                if ratio is None
                else f"{ratio:.2f}x of {gpu_name}'s tracked bytes + "
                "its overhead (target: within 10%)",
            )

        report.section("2b. VRAM given back by an unload")
        for name in ("in-worker", "in-server"):
            before = gpu_bytes(gpu, pids)
            client.post(f"/models/{name}/unload", headers=headers).raise_for_status()
            done = functools.partial(unloaded, client, name)
            server.wait_until(done, f"{name} unloaded", timeout=120)
            after = gpu_bytes(gpu, pids)
            if before is None or after is None:
                report.add(f"freed_by_unloading_{name}", None, "unknown (no NVML figures)")
            else:
                freed = sum(before.values()) - sum(after.values())
                report.add(f"freed_by_unloading_{name}_bytes", freed, mib(freed))

        report.section("3. warm p50 through the server")
        client.post("/models/in-server/load", headers=headers).raise_for_status()
        samples = timed(
            requests,
            lambda: client.post(
                "/models/in-server/predict", json={"inputs": text}
            ).raise_for_status(),
        )
        report.add("server_warm_p50_ms", p50_ms(samples), f"{p50_ms(samples)} ms")

        report.section("4. the host-RAM tier through the server")
        if gpu is None:
            report.add("server_reload_from_host_seconds", None, ON_HOST)
        else:
            tier_checks(report, server, client, headers, gpu, folder, model, text)
        report.section("5. per-device figures for operators")
        devices = client.get("/models").json().get("devices", [])
        report.add(
            "models_json_per_device",
            len(devices),
            ", ".join(f"{d['device']}: {mib(d['used_bytes'])}" for d in devices),
        )

        report.section("exit")
        pids = server_pids(server, client.get("/models").json())
        started = time.perf_counter()
        server.send(signal.SIGTERM)
        code = server.wait(timeout=300)
        report.add("exit_code", code)
        report.add("exit_seconds", round(time.perf_counter() - started, 2))
        time.sleep(1.0)  # the driver frees a dead process's memory soon after it exits
        left = gpu_bytes(gpu, pids)
        report.add(
            "left_on_gpu_after_exit_bytes",
            None if left is None else sum(left.values()),
            "unknown (no NVML figures)" if left is None else mib(sum(left.values())),
        )


# ----------------------------------------------------------------- the in-process part


def load_here(model: str, device: str) -> Any:
    from registry.config.schema import ModelSpec
    from registry.loaders import LoadContext, load_model
    from registry.sources import resolve_source

    source = str(STORE / model)
    spec = ModelSpec(task=MODELS[model][0], source=source, device=device)
    ctx = LoadContext("gpu-check", spec, resolve_source(source, REPO), REPO, device)
    return load_model(ctx)


def synchronize(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize(device)


def in_process_checks(
    report: Report, gpu: Device | None, model: str, text: str, requests: int
) -> None:
    device = "cpu" if gpu is None else gpu.name
    if gpu is not None:
        import torch

        torch.zeros(1, device=device)  # the CUDA context, outside the timings

    report.section("3b. warm p50 in this process (same loader, no HTTP)")
    loaded = load_here(model, device)
    samples = timed(requests, lambda: loaded.predict([text], {}))
    report.add("in_process_warm_p50_ms", p50_ms(samples), f"{p50_ms(samples)} ms")
    server_p50 = report.figures.get("server_warm_p50_ms")
    if isinstance(server_p50, float):
        report.add("server_over_in_process_p50_ms", round(server_p50 - p50_ms(samples), 3))
    loaded.close()

    report.section("4b. host-to-device copy vs load from disk, in this process")
    started = time.perf_counter()
    cold = load_here(model, device)
    synchronize(device)
    cold_seconds = time.perf_counter() - started
    cold.close()
    report.add("load_from_disk_seconds", round(cold_seconds, 3), f"{cold_seconds:.3f} s")
    on_host = load_here(model, "cpu")
    started = time.perf_counter()
    on_host.module.to(device)
    synchronize(device)
    copy_seconds = time.perf_counter() - started
    on_host.close()
    report.add("host_to_device_copy_seconds", round(copy_seconds, 3), f"{copy_seconds:.3f} s")
    ratio = copy_seconds / cold_seconds if cold_seconds else None
    report.add(
        "copy_over_load",
        None if ratio is None else round(ratio, 3),
        "n/a" if ratio is None else f"{ratio:.3f}x (target for the tier: <= 0.3x)",
    )


# ------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", choices=sorted(MODELS), default="bert-memory-demo")
    parser.add_argument("--requests", type=int, default=200, help="per sustained run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--host-dry-run",
        action="store_true",
        help="run every step on the host (no GPU figures): checks this script on a CPU",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    found = discover({}, gpus=not args.host_dry_run)
    gpus = [d for d in found if d.name != "cpu"]
    if not gpus and not args.host_dry_run:
        print(f"gpu_check: no GPU found: {why_no_gpu()}. Nothing to check on this machine.")
        return 0
    if not (STORE / args.model / "config.json").exists():
        print(f"gpu_check: {STORE / args.model} is missing; run scripts/setup.sh first")
        return 2
    text = MODELS[args.model][1]
    report = Report()
    report.section("1. devices and their default budgets")
    for device in found:
        share = 1.0 if device.name == "cpu" else DEFAULT_GPU_SHARE
        label = device.label
        report.add(
            f"{device.name}_total_bytes",
            device.total,
            f"{format_bytes(device.total)} ({', '.join(filter(None, [device.kind, label]))})",
        )
        if device.name != "cpu":
            report.add(
                f"{device.name}_default_budget_bytes",
                int(device.total * share),
                f"{format_bytes(device.total * share)} ({share:.0%})",
            )
            used = device_used(device)
            report.add(f"{device.name}_used_before_bytes", used, mib(used))
    report.add(
        "per_device_eviction",
        None,
        "wired; checked on simulated GPUs by tests/test_device_placement.py (not measured here)",
    )
    gpu = gpus[0] if gpus else None
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        server_checks(report, gpu, args.model, text, args.requests, Path(tmp))
    in_process_checks(report, gpu, args.model, text, args.requests)
    if args.json is not None:
        args.json.write_text(json.dumps(report.figures, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
