"""Budgets per device, placement across GPUs and eviction per device, through the real manager
on simulated GPUs (the fake loader claims memory on a simulated cuda:0 and cuda:1)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
from support import ask, running, wait_until
from worker_support import forkserver  # noqa: F401 (a fixture)

from registry.config.devices import config_devices
from registry.config.schema import Config
from registry.errors import CapacityExceeded
from registry.loaders import fake
from registry.manager import ModelManager
from registry.memory.device_usage import process_bytes
from registry.payload import TextRequest

WriteConfig = Callable[[str], Config]
MB = 10**6

SERVER = """
server:
  memory_budget: {cpu: 100MB, cuda:0: 300MB, cuda:1: 300MB}
  simulated_devices: {cuda:0: 1GB, cuda:1: 1GB}
  watch: false
  capacity_wait: 0.5s
  isolation: thread
models:
"""


def gpu(name: str, device: str, nbytes: str = "200MB", extra: str = "") -> str:
    """A fake model holding 1 MB on the host and `nbytes` on its GPU."""
    return (
        f"  {name}:\n    loader: fake\n    device: {device}\n{extra}"
        f"    options: {{size: 1MB, device_bytes: {nbytes}}}\n"
    )


def used(manager: ModelManager) -> dict[str, int]:
    """Bytes used on each device, as GET /models shows them."""
    return {d.device: d.used_bytes for d in manager.snapshot().devices}


def home(manager: ModelManager, name: str) -> str | None:
    holding = manager.describe(name).holding
    return None if holding is None else holding.home


@pytest.mark.anyio
async def test_each_device_has_its_own_budget_and_a_gpu_model_spends_its_gpus(
    write_config: WriteConfig,
) -> None:
    """The host and each GPU show their own budget; a model on cuda:1 is charged its GPU
    bytes on cuda:1 and its host-side bytes on the host, and its unload gives both back."""
    config = write_config(SERVER + gpu("m", "cuda:1"))
    async with running(config) as manager:
        devices = {d.device: d for d in manager.snapshot().devices}
        assert list(devices) == ["cpu", "cuda:0", "cuda:1"]
        assert [d.budget_bytes for d in devices.values()] == [100 * MB, 300 * MB, 300 * MB]
        assert devices["cuda:1"].kind == "simulated" and devices["cuda:1"].total_bytes == 10**9
        await manager.predict("m", TextRequest("x"))
        assert used(manager) == {"cpu": 1 * MB, "cuda:0": 0, "cuda:1": 200 * MB}
        view = manager.describe("m")
        assert view.device_resolved == "cuda:1" and home(manager, "m") == "cuda:1"
        assert view.holding is not None and view.holding.held_bytes == 200 * MB
        await manager.unload("m")
        assert used(manager) == {"cpu": 0, "cuda:0": 0, "cuda:1": 0}


@pytest.mark.anyio
async def test_eviction_frees_room_only_on_the_device_that_needs_it(
    write_config: WriteConfig,
) -> None:
    """A load on a full cuda:1 evicts the idle model on cuda:1, never the (older, idle)
    models on cuda:0 or the host, and no device goes over its budget."""
    host = "  h:\n    loader: fake\n    options: {size: 50MB}\n"
    config = write_config(
        SERVER + host + gpu("a0", "cuda:0") + gpu("b1", "cuda:1") + gpu("c1", "cuda:1")
    )
    async with running(config) as manager:
        for name in ("h", "a0", "b1"):  # h and a0 are the least recently used
            await manager.predict(name, TextRequest("x"))
        await manager.predict("c1", TextRequest("x"))
        states = {m.name: m.state.value for m in manager.snapshot().models}
        assert states == {"h": "loaded", "a0": "loaded", "b1": "unloaded", "c1": "loaded"}
        assert used(manager) == {"cpu": 52 * MB, "cuda:0": 200 * MB, "cuda:1": 200 * MB}
        for device in manager.snapshot().devices:
            assert device.used_bytes <= device.budget_bytes


@pytest.mark.anyio
async def test_cuda_places_a_model_on_the_gpu_with_room(write_config: WriteConfig) -> None:
    """`device: cuda` goes where it fits without evicting, the GPU with the most room left;
    a list keeps to its devices and prefers the first on a tie; the fake claims its
    memory on the GPU it was placed on."""
    config = write_config(
        SERVER
        + gpu("big", "cuda:0", "250MB")
        + gpu("any", "cuda")
        + gpu("listed", "[cuda:1, cuda:0]", "50MB")
    )
    async with running(config) as manager:
        await manager.predict("big", TextRequest("x"))
        await manager.predict("any", TextRequest("x"))  # only cuda:1 has 200 MB free
        assert home(manager, "any") == "cuda:1"
        assert manager.describe("any").device_resolved == "cuda:1"
        gpu1 = config_devices(manager.config)[2]
        assert process_bytes(gpu1, os.getpid()) == 200 * MB
        await manager.predict("listed", TextRequest("x"))  # 50 MB free on each: the first
        assert home(manager, "listed") == "cuda:1"
        assert used(manager) == {"cpu": 3 * MB, "cuda:0": 250 * MB, "cuda:1": 250 * MB}


@pytest.mark.anyio
async def test_placement_evicts_where_it_costs_least(write_config: WriteConfig) -> None:
    """With both GPUs full, `device: cuda` evicts on the GPU whose idle model is the cheaper
    to load again, and leaves the other GPU alone."""
    slow = "    options: {size: 1MB, device_bytes: 250MB, load_seconds: 1.0}\n"
    config = write_config(
        SERVER
        + f"  slow0:\n    loader: fake\n    device: cuda:0\n{slow}"
        + gpu("quick1", "cuda:1", "250MB")
        + gpu("any", "cuda", "100MB")
    )
    async with running(config) as manager:
        await manager.predict("quick1", TextRequest("x"))
        await manager.predict("slow0", TextRequest("x"))
        await manager.predict("any", TextRequest("x"))
        assert home(manager, "any") == "cuda:1"
        states = {m.name: m.state.value for m in manager.snapshot().models}
        assert states == {"slow0": "loaded", "quick1": "unloaded", "any": "loaded"}


@pytest.mark.anyio
async def test_a_model_with_no_room_on_its_gpu_waits_then_gets_capacity_naming_it(
    write_config: WriteConfig,
) -> None:
    """A pinned model fills cuda:1: a load for cuda:1 waits capacity_wait and gets 503
    `capacity` naming cuda:1, while a model on cuda:0 loads meanwhile (no eviction there)."""
    config = write_config(
        SERVER
        + gpu("pinned1", "cuda:1", "250MB", "    pinned: true\n")
        + gpu("more1", "cuda:1")
        + gpu("zero", "cuda:0")
    )
    async with running(config) as manager:
        await manager.predict("pinned1", TextRequest("x"))
        waiting = ask(manager, "more1")
        await manager.predict("zero", TextRequest("x"))
        with pytest.raises(CapacityExceeded) as excinfo:
            await waiting
        assert excinfo.value.device == "cuda:1"
        assert "cuda:1" in excinfo.value.message and "in use or pinned" in excinfo.value.message
        assert manager.describe("pinned1").state.value == "loaded"
        assert used(manager)["cuda:1"] == 250 * MB


@pytest.mark.anyio
async def test_a_host_model_never_evicts_a_gpu_model_for_room(write_config: WriteConfig) -> None:
    """The host's budget is the host's: a big host model evicts the idle host model, not the
    GPU model whose host-side part holds host bytes."""
    host = "  h{n}:\n    loader: fake\n    options: {{size: 60MB}}\n"
    config = write_config(
        SERVER + gpu("g", "cuda:0", "100MB") + host.format(n=1) + host.format(n=2)
    )
    async with running(config) as manager:
        for name in ("g", "h1", "h2"):
            await manager.predict(name, TextRequest("x"))
        states = {m.name: m.state.value for m in manager.snapshot().models}
        assert states == {"g": "loaded", "h1": "unloaded", "h2": "loaded"}


@pytest.mark.anyio
async def test_concurrent_cold_requests_on_a_gpu_make_one_load(write_config: WriteConfig) -> None:
    """Single flight holds on a GPU: 16 concurrent requests for a cold GPU model load it once."""
    config = write_config(
        SERVER
        + gpu("m", "cuda", extra="").replace(
            "device_bytes: 200MB}", "device_bytes: 200MB, load_seconds: 0.2}"
        )
    )
    async with running(config) as manager:
        await asyncio.gather(*(ask(manager, "m", str(i)) for i in range(16)))
        assert fake.attempts("m") == 1
        assert used(manager)["cuda:0"] == 200 * MB


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.usefixtures("forkserver")
async def test_a_process_model_is_charged_its_workers_footprint_on_its_gpu(
    write_config: WriteConfig,
) -> None:
    """A worker process's claim on its simulated GPU, read under the worker's pid, is the
    model's charge on that GPU (not the server's estimate); the unload frees it there."""
    config = write_config(
        SERVER.replace("isolation: thread", "isolation: process")
        + "  w:\n    loader: fake\n    device: cuda\n"
        "    options: {size: 1MB, device_bytes: 150MB}\n"
    )
    async with running(config) as manager:
        await manager.predict("w", TextRequest("x"))
        view = manager.describe("w")
        assert view.worker is not None and view.worker.pid is not None
        gpu0 = config_devices(config)[1]
        assert process_bytes(gpu0, view.worker.pid) == 150 * MB
        assert used(manager)["cuda:0"] == 150 * MB
        pid = view.worker.pid
        await manager.unload("w")
        await wait_until(lambda: process_bytes(gpu0, pid) == 0, "the worker's claim is gone")
        assert used(manager)["cuda:0"] == 0
