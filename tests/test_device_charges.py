"""What a model really holds on its GPU, followed after the load, through the real manager on
simulated GPUs: a worker's footprint after its requests (a real worker process), a thread
model's device bytes, the server's own footprint as the device's fixed overhead, and the
check after an unload that the worker's bytes are gone from the GPU."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from support import running, wait_until
from worker_support import forkserver  # noqa: F401 (a fixture)

from registry.config.devices import config_devices
from registry.config.schema import Config
from registry.events import EventKind
from registry.manager import ModelManager
from registry.memory.device_usage import ledger, process_bytes
from registry.payload import TextRequest

WriteConfig = Callable[[str], Config]
MB = 10**6
SERVER = """
server:
  memory_budget: {cpu: 100MB, cuda:0: 300MB, cuda:1: 300MB}
  simulated_devices: {cuda:0: 1GB, cuda:1: 1GB}
  watch: false
  isolation: thread
models:
"""


def fake(name: str, device: str, nbytes: str, leak: str = "0", extra: str = "") -> str:
    return (
        f"  {name}:\n    loader: fake\n    device: {device}\n{extra}"
        f"    options: {{size: 1MB, device_bytes: {nbytes}, device_leak: {leak}}}\n"
    )


def states_of(manager: ModelManager) -> dict[str, str]:
    return {m.name: m.state.value for m in manager.snapshot().models}


def used(manager: ModelManager) -> dict[str, int]:
    return {d.device: d.used_bytes for d in manager.snapshot().devices}


def held(manager: ModelManager, name: str, device: str) -> int:
    holding = manager.describe(name).holding
    assert holding is not None and holding.device_bytes is not None
    return holding.device_bytes.get(device, 0)


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.usefixtures("forkserver")
async def test_a_workers_gpu_charge_follows_its_footprint_after_requests(
    write_config: WriteConfig,
) -> None:
    """A worker whose allocator cache grows with each call (device_leak) is charged, after
    each request, what its process holds on the GPU as measured under its pid; its unload
    event says the GPU holds nothing of it any more."""
    config = write_config(SERVER + fake("w", "cuda:0", "150MB", "10MB", "    isolation: process\n"))
    gpu0 = config_devices(config)[1]
    async with running(config) as manager:
        await manager.predict("w", TextRequest("x"))
        pid = manager.describe("w").worker.pid
        assert isinstance(pid, int)
        assert held(manager, "w", "cuda:0") == process_bytes(gpu0, pid) == 160 * MB
        await manager.predict("w", TextRequest("y"))
        assert held(manager, "w", "cuda:0") == process_bytes(gpu0, pid) == 170 * MB
        assert used(manager)["cuda:0"] == 170 * MB
        # its size is its charge on its home device, not its host memory in between
        assert manager.describe("w").size_bytes == 170 * MB
        await manager.unload("w")
        unloaded = [e for e in manager.events.recent() if e.kind is EventKind.UNLOADED]
        assert unloaded[-1].data["device"] == "cuda:0"
        assert unloaded[-1].data["device_left_bytes"] == 0


@pytest.mark.anyio
async def test_growth_on_a_gpu_evicts_only_there(write_config: WriteConfig) -> None:
    """A thread model whose GPU bytes grow with its calls is charged them; growth that does
    not fit evicts the idle model on that GPU, not those on the other GPU or the host."""
    host = "  h:\n    loader: fake\n    options: {size: 50MB}\n"
    config = write_config(
        SERVER
        + host
        + fake("other1", "cuda:1", "200MB")
        + fake("idle0", "cuda:0", "150MB")
        + fake("grows", "cuda:0", "100MB", "30MB")
    )
    async with running(config) as manager:
        for name in ("h", "other1", "idle0", "grows"):
            await manager.predict(name, TextRequest("x"))
        assert held(manager, "grows", "cuda:0") == 130 * MB
        await manager.predict("grows", TextRequest("y"))  # 160 MB + 150 MB > 300 MB
        await wait_until(lambda: states_of(manager)["idle0"] == "unloaded", "idle0 is evicted")
        states = {m.name: m.state.value for m in manager.snapshot().models}
        assert states == {"h": "loaded", "other1": "loaded", "idle0": "unloaded", "grows": "loaded"}
        assert used(manager) == {"cpu": 52 * MB, "cuda:0": 160 * MB, "cuda:1": 200 * MB}


@pytest.mark.anyio
async def test_the_servers_own_gpu_footprint_is_the_devices_fixed_overhead(
    write_config: WriteConfig,
) -> None:
    """What the server's process holds on a GPU beyond its thread models' charges (its CUDA
    context: here a claim of the test's own process) is measured once, after its first
    model loads there, and taken off what models may hold on that GPU."""
    config = write_config(SERVER + fake("a", "cuda:0", "100MB") + fake("b", "cuda:0", "150MB"))
    context = ledger().claim("cuda:0", 80 * MB, owner="cuda-context")
    try:
        async with running(config) as manager:
            await manager.predict("a", TextRequest("x"))
            devices = {d.device: d for d in manager.snapshot().devices}
            assert devices["cuda:0"].overhead_bytes == 80 * MB
            assert devices["cuda:1"].overhead_bytes == 0
            assert process_bytes(config_devices(config)[1], os.getpid()) == 180 * MB
            # 100 + 150 MB fit 300 MB, but not the 220 MB left for models: a goes
            await manager.predict("b", TextRequest("x"))
            states = {m.name: m.state.value for m in manager.snapshot().models}
            assert states == {"a": "unloaded", "b": "loaded"}
    finally:
        context.release()
