"""Process workers under faults: a reload mid-load, a crash under batching, a worker that dies
while idle, memory that grows past the budget, shutdown with a busy worker.

Real worker processes (the fake loader with `isolation: process`) driven through the real
ModelManager.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable

import pytest
from support import MB, ask, running, wait_until
from worker_support import forkserver, worker_children  # noqa: F401 (a fixture)

from registry.config.schema import Config
from registry.errors import InferenceError, Unavailable, WorkerDied
from registry.manager import ModelManager
from registry.process import proxy as workers
from registry.process.child import memory_figures

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.usefixtures("forkserver")]


def server(**settings: object) -> str:
    """A server: block with a short backoff and the given settings, then `models:`."""
    base: dict[str, object] = {
        "memory_budget": "2GB",
        "watch": "false",
        "retry_backoff": "{initial: 0.05, max: 0.05}",
        "load_timeout": "60s",
        "request_timeout": "120s",
    }
    base.update(settings)
    lines = "".join(f"  {key}: {value}\n" for key, value in base.items())
    return f"server:\n{lines}models:\n"


def entry(name: str, isolation: str = "process", **options: object) -> str:
    """A fake model's YAML entry (options in flow style)."""
    opts = ", ".join(
        f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in options.items()
    )
    return f"  {name}:\n    loader: fake\n    isolation: {isolation}\n    options: {{{opts}}}\n"


def worker_pid(manager: ModelManager, name: str) -> int:
    worker = manager.describe(name).worker
    assert worker is not None and isinstance(worker.pid, int)
    return worker.pid


async def test_a_reload_during_a_process_load_kills_its_worker_and_frees_its_bytes(
    write_config: Callable[[str], Config],
) -> None:
    """A process model changed in models.yaml while its load hangs: the old worker is killed
    and its bytes are freed at once, so the new entry loads instead of answering 503
    capacity until load_timeout."""
    head = server(memory_budget="100MB", capacity_wait="3s")
    config = write_config(head + entry("big", size="60MB", hang=True))
    async with running(config) as manager:
        waiting = ask(manager, "big")
        await wait_until(lambda: len(worker_children()) == 1, "the hanging load's worker runs")
        (old,) = worker_children()
        write_config(head + entry("big", size="60MB"))
        changes = await manager.reload()
        assert changes.replaced == ["big"]
        # The request waiting for the old load is served by the new entry.
        assert await waiting
        assert manager.describe("big").state == "loaded"
        assert old not in worker_children()
        assert worker_children() == [worker_pid(manager, "big")]
        await wait_until(lambda: manager.snapshot().abandoned == (), "no abandoned load is left")
        assert manager.snapshot().used_bytes == manager.describe("big").holding.held_bytes


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
async def test_requests_queued_behind_a_crashed_worker_get_a_clear_answer(
    write_config: Callable[[str], Config], batched: bool
) -> None:
    """Six requests at once, one of which crashes the worker: each gets its answer, 502
    worker_died or 503 with a retry delay; never a 500 from a retired inference thread."""
    batch = "    batch: {max_size: 8, max_wait_ms: 50}\n" if batched else ""
    config = write_config(
        server()
        + entry("crashy", size="1MB", crash="SIGKILL", crash_on="boom", predict_seconds=0.2)
        + batch
    )
    async with running(config) as manager:
        assert await ask(manager, "crashy", "warm")
        texts = ["a", "boom", "b", "c", "d", "e"]
        tasks = [ask(manager, "crashy", text) for text in texts]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors, "the crash must fail at least its own request"
        for error in errors:
            assert isinstance(error, WorkerDied | Unavailable), repr(error)
            if isinstance(error, Unavailable):
                assert error.retry_after >= 1
        assert not any(type(e) is InferenceError for e in errors)
        # The model comes back on a later request.
        await asyncio.sleep(0.1)  # past the 0.05 s backoff
        assert await ask(manager, "crashy", "again")


async def test_a_worker_that_dies_while_idle_is_unloaded_at_once(
    write_config: Callable[[str], Config],
) -> None:
    """SIGKILL an idle worker: the model is unloaded at once, its bytes released and its
    death counted; the next request loads it again as a normal cold load and is served."""
    config = write_config(server() + entry("idle", size="5MB"))
    async with running(config) as manager:
        assert await ask(manager, "idle")
        pid = worker_pid(manager, "idle")
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: manager.describe("idle").state == "unloaded", "it is unloaded")
        view = manager.describe("idle")
        assert view.worker_deaths == 1
        assert view.worker is None
        assert manager.snapshot().used_bytes == 0
        await wait_until(lambda: pid not in workers.live_pids(), "the dead worker is reaped")
        assert await ask(manager, "idle")  # no 502, no 503 backoff: a cold load
        view = manager.describe("idle")
        assert view.state == "loaded"
        assert view.load_count == 2
        assert worker_children() == [worker_pid(manager, "idle")]


async def test_a_hot_worker_that_dies_while_idle_loads_again_at_once(
    write_config: Callable[[str], Config],
) -> None:
    """A hot model's worker killed while idle: the model loads again without waiting for a
    request (hot means kept loaded), in a new worker."""
    config = write_config(server() + entry("kept", size="5MB") + "    hot: true\n")
    async with running(config) as manager:
        await manager.wait_hot()
        pid = worker_pid(manager, "kept")
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: manager.describe("kept").load_count == 2, "it loads again")
        await wait_until(lambda: manager.describe("kept").state == "loaded", "it is loaded")
        assert manager.describe("kept").worker_deaths == 1
        assert worker_children() == [worker_pid(manager, "kept")] != [pid]


async def test_a_growing_worker_is_tracked_by_its_replys_measurement_and_makes_room(
    write_config: Callable[[str], Config],
) -> None:
    """A worker that grows 8 MB per call: after each call the tracked size is the private
    memory the worker measured for that very reply; once it no longer fits, the idle model
    is evicted; once nothing is left to evict, the worker is recycled. The tracked total is
    the measured truth throughout."""
    config = write_config(
        server(memory_budget="64MB", worker_memory_margin="50.0")  # no leak recycle
        + entry("grows", size="1MB", leak="8MB")
        + entry("idle", isolation="thread", size="12MB")
    )
    async with running(config) as manager:
        assert await ask(manager, "idle")
        assert await ask(manager, "grows", "first")
        for call in range(8):
            assert await ask(manager, "grows", f"call {call}")
            view = manager.describe("grows")
            assert view.worker is not None
            actual = memory_figures(worker_pid(manager, "grows"))["private"]
            # The reply's own measurement (taken after this call), not the previous one.
            assert abs(view.worker.private_bytes - actual) < 2 * MB, (call, view.worker, actual)
            assert view.holding is not None
            assert view.holding.held_bytes == max(
                view.worker.param_bytes, view.worker.private_bytes
            )
            if manager.describe("idle").state != "loaded":
                break
        else:
            pytest.fail("the idle model was never evicted although the worker outgrew the room")
        await wait_until(lambda: manager.describe("idle").state == "unloaded", "idle is evicted")
        assert manager.snapshot().used_bytes == manager.describe("grows").holding.held_bytes
        # Nothing is left to evict: once it outgrows the budget its worker is recycled.
        first = worker_pid(manager, "grows")
        for call in range(12):
            assert await ask(manager, "grows", f"more {call}")
            if manager.describe("grows").recycles:
                break
        assert manager.describe("grows").recycles == 1
        await wait_until(lambda: manager.describe("grows").state == "loaded", "it reloads")
        assert worker_children() == [worker_pid(manager, "grows")] != [first]
        snapshot = manager.snapshot()
        assert snapshot.used_bytes == manager.describe("grows").holding.held_bytes
        assert snapshot.used_bytes <= snapshot.budget_bytes


async def test_shutdown_with_a_busy_worker_ends_it_cleanly_and_counts_it(
    write_config: Callable[[str], Config], caplog: pytest.LogCaptureFixture
) -> None:
    """Shutdown while a worker is in an 8 s call with a 2 s drain: the worker is ended and
    counted in the summary (1 model and its bytes), and nothing logs a traceback."""
    config = write_config(server(drain_timeout="2s") + entry("slow", size="5MB", predict_seconds=8))
    caplog.set_level(logging.INFO)
    unread: list[dict[str, object]] = []  # what the loop reports: outcomes nobody read
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unread.append(context))
    manager = ModelManager(config)
    await manager.start()
    try:
        call = ask(manager, "slow")
        await wait_until(lambda: manager.describe("slow").in_flight == 1, "the call runs")
        await wait_until(lambda: manager.describe("slow").state == "loaded", "loaded")
        await asyncio.sleep(0.5)  # inside the worker's 8 s call
        pid = worker_pid(manager, "slow")
        report = await manager.shutdown(drain_timeout=2)
        with pytest.raises(Unavailable):
            await call
        del call
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0.05)
    finally:
        await manager.shutdown(drain_timeout=2)
        loop.set_exception_handler(None)
    assert [str(c.get("message")) + repr(c.get("exception")) for c in unread] == []
    assert report["unloaded"] == 1
    assert report["freed_bytes"] >= 5 * MB
    assert pid not in worker_children()
    assert workers.live_pids() == []
    problems = [r for r in caplog.records if r.exc_info or "never retrieved" in r.getMessage()]
    assert problems == [], [r.getMessage() for r in problems]
    summary = [r.getMessage() for r in caplog.records if "shutdown complete" in r.getMessage()]
    assert summary and "unloaded 1 model(s)" in summary[0]
