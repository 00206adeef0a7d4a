"""A batched request's lease when its client goes away: kept while its batch runs, given
back at once while it is still queued. The real manager with the fake loader."""

from __future__ import annotations

import asyncio

import pytest
from support import ask, running, wait_until

from registry.loaders import fake
from registry.views import BatchStats

pytestmark = pytest.mark.anyio

BATCHED = (
    "models:\n"
    "  m: {loader: fake, batch: {max_size: 8, max_wait_ms: 1}, options: {predict_gate: hold}}\n"
)


async def test_a_cancelled_request_in_a_running_batch_keeps_its_lease_until_the_call_ends(
    write_config,
) -> None:
    """A batched request whose client goes away while its batch's call runs still holds the
    model: its lease stays counted, and an admin unload waits until the call has ended
    instead of unloading the model under the running call."""
    async with running(write_config(BATCHED)) as manager:
        await manager.load("m")
        gone = ask(manager, "m", "gone")
        # The pool's one job is the batch's call: the request has left the batcher's queue.
        await wait_until(lambda: manager.pool.pending == 1, "the batch's call is submitted")
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert manager.describe("m").in_flight == 1  # the old code released it here
        unload = asyncio.create_task(manager.unload("m"))
        done, _ = await asyncio.wait({unload}, timeout=0.5)
        assert not done, "the model was unloaded while its batch's call was running"
        assert manager.describe("m").state == "loaded"
        fake.open_gate("hold")
        view = await asyncio.wait_for(unload, 10)
        assert view.state == "unloaded"
        assert view.in_flight == 0
        assert manager.pool.pending == 0  # the call had ended when the model unloaded


async def test_a_cancelled_request_still_queued_for_a_batch_leaves_at_once(write_config) -> None:
    """A batched request whose client goes away while it still waits in the batcher's queue
    (a batch ahead of it is running) gives its lease back at once and never runs."""
    async with running(write_config(BATCHED)) as manager:
        await manager.load("m")
        first = ask(manager, "m", "first")
        await wait_until(lambda: manager.pool.pending == 1, "the first batch's call is submitted")
        gone = ask(manager, "m", "gone")
        await wait_until(lambda: manager.describe("m").in_flight == 2, "both hold m")
        gone.cancel()
        await wait_until(lambda: manager.describe("m").in_flight == 1, "the gone one leaves")
        fake.open_gate("hold")
        assert await asyncio.wait_for(first, 10) is not None
        await wait_until(lambda: manager.describe("m").in_flight == 0, "first's lease ends")
        assert manager.describe("m").batches == BatchStats(batches=1, inputs=1)
