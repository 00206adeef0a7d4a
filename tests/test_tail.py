"""Loads take room in the order they ask for it (the real manager, fake loader, gated loads).

A load that must evict waits for the loads already running (so their models serve their
waiting requests before anything is chosen as idle), but not for loads that asked after it:
those wait behind it, even when they would fit in the free room, and the room its victims
free is its own.
"""

from __future__ import annotations

import asyncio

import pytest
from support import ask, running, wait_until

from registry.loaders import fake
from registry.manager import ModelManager
from registry.payload import TextRequest

pytestmark = pytest.mark.anyio


def _config(capacity_wait: str) -> str:
    return (
        f"server: {{memory_budget: 100MB, max_parallel_loads: 3, capacity_wait: {capacity_wait},"
        " eviction: lru}\n"
        "models:\n"
        "  idle: {loader: fake, options: {size: 50MB}}\n"
        "  first: {loader: fake, options: {size: 20MB, gate: tail-first}}\n"
        "  big: {loader: fake, options: {size: 60MB}}\n"
        "  later: {loader: fake, options: {size: 30MB, gate: tail-later}}\n"
    )


async def _big_asks_behind_first(manager: ModelManager) -> list[asyncio.Task[object]]:
    """idle is loaded and idle; first's load runs (gated); big must evict idle to fit and
    waits for first's load; then later asks for room that is free now (30 MB)."""
    await manager.predict("idle", TextRequest("x"))
    tasks = [ask(manager, "first")]
    await wait_until(lambda: fake.attempts("first") == 1, "first's loader runs")
    tasks.append(ask(manager, "big"))
    await wait_until(lambda: manager.describe("big").size_bytes is not None, "big asks for room")
    tasks.append(ask(manager, "later"))
    # later's estimate is set in the same step of its task that first asks for room.
    await wait_until(lambda: manager.describe("later").size_bytes is not None, "later asks")
    return tasks


async def test_a_load_that_must_evict_does_not_wait_for_a_later_load(write_config) -> None:
    """When the load running before it ends, a load that must evict goes, although a load
    that asked after it (and fitted in the free room) has not ended: that one waits in line
    instead of taking the free room and holding the evicting load up until it ends."""
    async with running(write_config(_config("60s"))) as manager:
        tasks = await _big_asks_behind_first(manager)
        fake.open_gate("tail-first")
        await wait_until(lambda: manager.describe("big").state == "loaded", "big is loaded")
        assert manager.describe("idle").state == "unloaded"
        assert manager.describe("later").state == "loading"  # still in line or at its gate
        fake.open_gate("tail-later")
        answers = await asyncio.gather(*tasks)
        assert all(isinstance(a, dict) for a in answers)
        assert manager.snapshot().used_bytes <= 100_000_000


async def test_no_503_when_idle_models_hold_the_room_while_other_loads_start(
    write_config,
) -> None:
    """A model that fits the budget alone, whose room is held only by an idle model, loads
    and answers (no 503 capacity) even when capacity_wait passes while an earlier load runs
    and a later one asks for the free room meanwhile."""
    async with running(write_config(_config("1s"))) as manager:
        tasks = await _big_asks_behind_first(manager)
        answer = await manager.predict("big", TextRequest("x"))
        assert isinstance(answer, dict)
        assert manager.describe("big").load_count == 1
        assert manager.describe("idle").state == "unloaded"
        fake.open_gate("tail-first")
        fake.open_gate("tail-later")
        answers = await asyncio.gather(*tasks)
        assert all(isinstance(a, dict) for a in answers)
