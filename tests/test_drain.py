"""Shutdown drains, lowered budgets, eviction under load and clients that go away."""

from __future__ import annotations

import asyncio
import random

import pytest
from support import MB, ask, running, wait_until

from registry.errors import ShuttingDown, Unavailable
from registry.loaders import fake
from registry.manager import ModelManager
from registry.payload import TextRequest

pytestmark = pytest.mark.anyio


async def test_shutdown_serves_requests_that_wait_for_a_load(write_config) -> None:
    """A request admitted before shutdown is served when its load ends."""
    config = write_config("models:\n  m: {loader: fake, options: {gate: gm}}\n")
    manager = ModelManager(config)
    await manager.start()
    waiter = ask(manager, "m")
    await wait_until(lambda: fake.attempts("m") == 1, "the load starts")
    stopping = asyncio.create_task(manager.shutdown(drain_timeout=20))
    await wait_until(lambda: manager.closing, "shutdown begins")
    with pytest.raises(ShuttingDown):
        await manager.predict("m", TextRequest("late"))
    fake.open_gate("gm")
    assert await asyncio.wait_for(waiter, 10) is not None
    report = await stopping
    assert (report["drained"], report["abandoned"], report["abandoned_threads"]) == (1, 0, 0)


async def test_a_load_that_outlasts_the_drain_answers_shutting_down(write_config) -> None:
    """When the drain ends, a request still waiting for its load gets 503."""
    config = write_config("models:\n  m: {loader: fake, options: {gate: gm}}\n")
    manager = ModelManager(config)
    await manager.start()
    try:
        waiter = ask(manager, "m")
        await wait_until(lambda: fake.attempts("m") == 1, "the load starts")
        report = await asyncio.wait_for(manager.shutdown(drain_timeout=0.2), 10)
        with pytest.raises(ShuttingDown):
            await waiter
        assert (report["drained"], report["abandoned"], report["abandoned_threads"]) == (0, 1, 1)
    finally:
        fake.reset()


async def test_a_client_that_goes_away_is_dropped_from_a_models_queue(write_config) -> None:
    """A cancelled request queued behind a busy model never runs."""
    config = write_config("models:\n  m: {loader: fake, options: {predict_gate: hold}}\n")
    async with running(config) as manager:
        await manager.load("m")
        running_one = ask(manager, "m", "first")
        gone = ask(manager, "m", "second")
        await wait_until(lambda: manager.describe("m").in_flight == 2, "both hold m")
        gone.cancel()
        await wait_until(lambda: manager.describe("m").in_flight == 1, "the gone one leaves")
        fake.open_gate("hold")
        assert await running_one is not None
        assert manager.describe("m").served == 1


async def test_a_lowered_budget_is_restored_while_traffic_continues(write_config) -> None:
    """Busy models over a lowered budget take no new lease and unload."""
    text = (
        "server: {memory_budget: 100MB, capacity_wait: 0.2, watch: false}\n"
        "models:\n"
        "  a: {loader: fake, options: {size: 40MB, predict_seconds: 0.005}}\n"
        "  b: {loader: fake, options: {size: 40MB, predict_seconds: 0.005}}\n"
    )
    config = write_config(text)
    async with running(config) as manager:
        await manager.predict("a", TextRequest("warm"))
        await manager.predict("b", TextRequest("warm"))
        stop = asyncio.Event()
        served = 0

        async def client(name: str) -> None:
            nonlocal served
            while not stop.is_set():
                try:
                    await manager.predict(name, TextRequest("x"))
                    served += 1
                except Unavailable:
                    await asyncio.sleep(0.01)  # a client's pause before it retries (pacing)

        clients = [asyncio.create_task(client(name)) for name in ["a", "b"] * 4]
        await wait_until(lambda: served > 20, "traffic flows")
        config.path.write_text(text.replace("memory_budget: 100MB", "memory_budget: 50MB"))
        await manager.reload()
        assert manager.snapshot().budget_state == "restoring"
        await wait_until(
            lambda: manager.snapshot().used_bytes <= 50 * MB, "the budget is restored", 10
        )
        before = served
        await wait_until(lambda: served > before + 20, "traffic still flows")
        assert manager.snapshot().budget_state == "ok"
        stop.set()
        await asyncio.gather(*clients)
        assert manager.snapshot().peak_used_bytes <= 100 * MB


async def test_every_load_serves_a_request_under_skewed_traffic(write_config) -> None:
    """A model loaded for waiting requests is not evicted before they run.

    A small soak: 10 models, a budget for 3, 8 clients, Zipf-skewed picks, 400 requests.
    """
    rng = random.Random(15)
    names = [f"m{i}" for i in range(10)]
    weights = [1 / (rank + 1) for rank in range(len(names))]
    lines = "".join(
        f"  {name}: {{loader: fake, options: {{size: 30MB, load_seconds: 0.005, "
        "predict_seconds: 0.001}}\n"
        for name in names
    )
    server = "server: {memory_budget: 100MB, capacity_wait: 10, request_timeout: 60}\n"
    config = write_config(f"{server}models:\n{lines}")
    picks = rng.choices(names, weights, k=400)
    async with running(config) as manager:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for name in picks:
            queue.put_nowait(name)
        failures: list[BaseException] = []

        async def client() -> None:
            while not queue.empty():
                name = queue.get_nowait()
                try:
                    await manager.predict(name, TextRequest(name))
                except Unavailable as exc:
                    failures.append(exc)

        await asyncio.gather(*(client() for _ in range(8)))
        snapshot = manager.snapshot()
        loads = sum(m.load_count for m in snapshot.models)
        served = sum(m.served for m in snapshot.models)
        assert failures == []
        assert served == len(picks)
        assert snapshot.unused_loads == 0, f"{snapshot.unused_loads} of {loads} loads"
        assert snapshot.peak_used_bytes <= 100 * MB
