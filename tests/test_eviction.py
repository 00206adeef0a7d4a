"""Which models the real manager evicts, and when (fake loader, hand-built cases)."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from support import ask, running, states, wait_until

from registry.loaders import fake
from registry.manager import ModelManager
from registry.payload import TextRequest

pytestmark = pytest.mark.anyio


def eviction_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The registry's own "evicted ..." lines (registry.events logs each event once more)."""
    lines = (r.getMessage() for r in caplog.records if r.name == "registry")
    return [line for line in lines if line.startswith("evicted")]


async def test_a_big_load_evicts_only_what_it_needs(write_config, caplog) -> None:
    """Minimal victim set: like bert-memory-demo after digits, langid and minilm."""
    config = write_config(
        "server: {memory_budget: 300MB, eviction: lru}\n"
        "models:\n"
        "  digits: {loader: fake, options: {size: 1MB}}\n"
        "  langid: {loader: fake, options: {size: 2MB}}\n"
        "  minilm: {loader: fake, options: {size: 90MB}}\n"
        "  big: {loader: fake, options: {size: 266MB}}\n"
    )
    caplog.set_level(logging.INFO, logger="registry")
    async with running(config) as manager:
        for name in ("digits", "langid", "minilm"):
            await manager.predict(name, TextRequest("x"))
        await manager.predict("big", TextRequest("x"))
        assert states(manager) == {
            "digits": "loaded",
            "langid": "loaded",
            "minilm": "unloaded",
            "big": "loaded",
        }
    evictions = eviction_lines(caplog)
    assert len(evictions) == 1
    assert evictions[0].startswith("evicted minilm (")
    assert evictions[0].endswith("LRU, 3rd oldest of 3 idle) to fit big")


async def test_a_model_loaded_for_waiting_requests_serves_them_before_eviction(
    write_config,
) -> None:
    """Waiting requests protect their model like leases."""
    config = write_config(
        "server: {memory_budget: 100MB, capacity_wait: 10s}\n"
        "models:\n"
        "  a: {loader: fake, options: {size: 60MB, gate: ga}}\n"
        "  b: {loader: fake, options: {size: 60MB}}\n"
    )
    async with running(config) as manager:
        waiting = [ask(manager, "a") for _ in range(3)]
        await wait_until(lambda: manager.describe("a").queued == 3, "3 requests wait for a")
        other = ask(manager, "b")  # needs a's room while a loads
        # b's estimate is in: its load now waits for room (the same step of its task).
        await wait_until(lambda: manager.describe("b").size_bytes is not None, "b waits")
        fake.open_gate("ga")
        results = await asyncio.gather(*waiting, other)
        assert all(isinstance(r, dict) for r in results)
        assert fake.attempts("a") == 1  # a was not evicted under its waiting requests
        assert manager.describe("a").load_count == 1
        assert manager.describe("a").served == 3


SIZES = (10, 15, 20, 25, 30, 35, 40, 45)  # MB, under a budget of 100 MB


async def _replay(manager: ModelManager, trace: list[str], clients: int) -> int:
    requests = iter(trace)

    async def client() -> None:
        for name in requests:
            await manager.predict(name, TextRequest("x"))

    await asyncio.gather(*(client() for _ in range(clients)))
    return sum(int(m.load_count) for m in manager.snapshot().models)


@pytest.mark.parametrize("policy", ["lru", "cost"])
async def test_eight_clients_cause_no_more_loads_than_one(write_config, policy: str) -> None:
    """Concurrency must not cost hits: the same trace, 1 client then 8 clients."""
    eviction = "" if policy == "lru" else f", eviction: {policy}"  # today's code: no key
    text = f"server: {{memory_budget: 100MB{eviction}}}\nmodels:\n" + "".join(
        f"  m{i}: {{loader: fake, options: {{size: {size}MB, load_seconds: 0.02, "
        "predict_seconds: 0.002}}\n"
        for i, size in enumerate(SIZES)
    )
    names = [f"m{i}" for i in range(len(SIZES))]
    weights = [1 / rank for rank in range(1, len(SIZES) + 1)]  # Zipf(1.0)
    trace = random.Random(8).choices(names, weights=weights, k=120)
    loads = {}
    for clients in (1, 8):
        async with running(write_config(text, f"models-{clients}.yaml")) as manager:
            loads[clients] = await _replay(manager, trace, clients)
    assert loads[1] > 5  # the trace does make the cache work
    assert loads[8] <= loads[1], loads


@pytest.mark.parametrize(("policy", "victim"), [("lru", "dear"), ("cost", "cheap")])
async def test_the_policy_chooses_the_victim(
    write_config, caplog, policy: str, victim: str
) -> None:
    """`cost` keeps a frequently used, slow-to-load model over a rarely used cheap one."""
    config = write_config(
        f"server: {{memory_budget: 100MB, eviction: {policy}}}\n"
        "models:\n"
        "  dear: {loader: fake, options: {size: 40MB, load_seconds: 0.2}}\n"
        "  cheap: {loader: fake, options: {size: 40MB, load_seconds: 0.01}}\n"
        "  new: {loader: fake, options: {size: 40MB}}\n"
    )
    caplog.set_level(logging.INFO, logger="registry")
    async with running(config) as manager:
        for name in ("dear", "dear", "dear", "cheap"):  # cheap is the most recent
            await manager.predict(name, TextRequest("x"))
        view = manager.snapshot()
        assert view.eviction == policy
        priorities = {m.name: m.holding.eviction_priority for m in view.models}
        assert priorities["new"] is None
        assert isinstance(priorities["dear"], float) and isinstance(priorities["cheap"], float)
        if policy == "cost":
            assert priorities["cheap"] < priorities["dear"]
        await manager.predict("new", TextRequest("x"))
        assert states(manager)[victim] == "unloaded"
        assert manager.describe(victim).holding.eviction_priority is None
    line, *_ = eviction_lines(caplog)
    why = "cost priority " if policy == "cost" else "LRU, oldest of 2 idle"
    assert line.startswith(f"evicted {victim} (") and why in line and line.endswith("to fit new")
