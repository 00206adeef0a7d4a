"""The manager's contracts, driven through the real ModelManager with the shipped fake loader."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
from support import BLOCKED_LOOP_FAILSAFE, MB, ask, loop_lag, running, wait_until

from registry.errors import (
    CapacityExceeded,
    LoadPending,
    ModelFailed,
    ModelTooLarge,
    ShuttingDown,
    UnknownModel,
)
from registry.loaders import fake
from registry.manager import ModelManager
from registry.payload import TextRequest
from registry.views import Readiness

pytestmark = pytest.mark.anyio


def state(manager: ModelManager, name: str) -> str:
    return str(manager.describe(name).state)


async def test_64_concurrent_first_requests_cause_one_load(write_config) -> None:
    config = write_config("models:\n  m: {loader: fake, options: {size: 1MB, gate: open-m}}\n")
    async with running(config) as manager:
        tasks = [ask(manager, "m", f"text {i}") for i in range(64)]
        await wait_until(lambda: manager.describe("m").queued == 64, "64 requests wait")
        assert state(manager, "m") == "loading"
        fake.open_gate("open-m")
        results = await asyncio.gather(*tasks)
        assert len(results) == 64
        assert all(isinstance(r, dict) and r["label"].startswith("label-") for r in results)
        assert manager.describe("m").load_count == 1
        assert fake.attempts("m") == 1


async def test_two_cold_models_load_at_the_same_time(write_config) -> None:
    config = write_config(
        "models:\n"
        "  a: {loader: fake, options: {gate: ga}}\n"
        "  b: {loader: fake, options: {gate: gb}}\n"
    )
    async with running(config) as manager:
        tasks = [ask(manager, "a"), ask(manager, "b")]
        # Both loads are inside the loader while neither may finish: they overlap.
        await wait_until(lambda: fake.attempts("a") == 1 and fake.attempts("b") == 1, "both start")
        assert state(manager, "a") == state(manager, "b") == "loading"
        fake.open_gate("ga")
        fake.open_gate("gb")
        await asyncio.gather(*tasks)


async def test_a_client_that_goes_away_does_not_cancel_the_load(write_config) -> None:
    config = write_config("models:\n  m: {loader: fake, options: {gate: gm}}\n")
    async with running(config) as manager:
        task = ask(manager, "m")
        await wait_until(lambda: fake.attempts("m") == 1, "the load starts")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        fake.open_gate("gm")
        await wait_until(lambda: state(manager, "m") == "loaded", "the load finishes")
        assert manager.describe("m").load_count == 1
        assert await manager.predict("m", TextRequest("again")) is not None
        assert manager.describe("m").load_count == 1


async def test_a_leased_model_is_not_evicted(write_config) -> None:
    config = write_config(
        "server: {memory_budget: 100MB, capacity_wait: 0.2}\n"
        "models:\n"
        "  a: {loader: fake, options: {size: 60MB, predict_gate: hold}}\n"
        "  b: {loader: fake, options: {size: 60MB}}\n"
    )
    async with running(config) as manager:
        held = ask(manager, "a")
        await wait_until(lambda: manager.describe("a").in_flight == 1, "a is in use")
        with pytest.raises(CapacityExceeded) as excinfo:
            await manager.predict("b", TextRequest("x"))
        assert excinfo.value.retry_after >= 1
        assert "every other model is in use or pinned" in excinfo.value.message
        assert state(manager, "a") == "loaded"
        fake.open_gate("hold")
        await held
        await manager.predict("b", TextRequest("x"))  # now a is idle and can go
        assert state(manager, "a") == "unloaded"
        assert state(manager, "b") == "loaded"


async def test_a_loading_model_is_not_evicted(write_config) -> None:
    config = write_config(
        "server: {memory_budget: 100MB, capacity_wait: 0.2}\n"
        "models:\n"
        "  a: {loader: fake, options: {size: 60MB, gate: ga}}\n"
        "  b: {loader: fake, options: {size: 60MB}}\n"
    )
    async with running(config) as manager:
        loading = ask(manager, "a")
        await wait_until(lambda: fake.attempts("a") == 1, "a is loading")
        with pytest.raises(CapacityExceeded):
            await manager.predict("b", TextRequest("x"))
        assert state(manager, "a") == "loading"
        fake.open_gate("ga")
        await loading
        assert state(manager, "a") == "loaded"


async def test_a_pinned_model_is_not_evicted(write_config) -> None:
    config = write_config(
        "server: {memory_budget: 100MB, capacity_wait: 0.2}\n"
        "models:\n"
        "  a: {loader: fake, pinned: true, options: {size: 60MB}}\n"
        "  b: {loader: fake, options: {size: 60MB}}\n"
    )
    async with running(config) as manager:
        await manager.predict("a", TextRequest("x"))
        with pytest.raises(CapacityExceeded):
            await manager.predict("b", TextRequest("x"))
        assert state(manager, "a") == "loaded"
        assert manager.snapshot().used_bytes == 60 * MB


async def test_eviction_takes_the_least_recently_used_idle_model(write_config) -> None:
    config = write_config(
        "server: {memory_budget: 100MB, eviction: lru}\n"
        "models:\n"
        "  a: {loader: fake, options: {size: 40MB}}\n"
        "  b: {loader: fake, options: {size: 40MB}}\n"
        "  c: {loader: fake, options: {size: 40MB}}\n"
    )
    async with running(config) as manager:
        await manager.predict("a", TextRequest("x"))
        await manager.predict("b", TextRequest("x"))
        await manager.predict("a", TextRequest("x"))  # a is now more recent than b
        await manager.predict("c", TextRequest("x"))
        states = {m.name: m.state for m in manager.snapshot().models}
        assert states == {"a": "loaded", "b": "unloaded", "c": "loaded"}


async def test_the_estimate_is_reserved_then_replaced_by_the_measured_size(write_config) -> None:
    config = write_config(
        "server: {memory_budget: 100MB}\n"
        "models:\n"
        "  m: {loader: fake, size_hint: 10MB, options: {size: 30MB, gate: gm}}\n"
    )
    async with running(config) as manager:
        task = ask(manager, "m")
        await wait_until(lambda: fake.attempts("m") == 1, "the load starts")
        assert manager.snapshot().used_bytes == 10 * MB
        assert manager.describe("m").size_bytes == 10 * MB
        assert manager.describe("m").size_measured is False
        fake.open_gate("gm")
        await task
        assert manager.snapshot().used_bytes == 30 * MB
        assert manager.describe("m").size_bytes == 30 * MB
        assert manager.describe("m").size_measured is True


async def test_a_model_measured_bigger_than_the_budget_fails_naming_both_sizes(
    write_config,
) -> None:
    config = write_config(
        "server: {memory_budget: 100MB}\n"
        "models:\n"
        "  big: {loader: fake, size_hint: 10MB, options: {size: 150MB}}\n"
        "  ok: {loader: fake, options: {size: 10MB}}\n"
    )
    async with running(config) as manager:
        with pytest.raises(ModelTooLarge) as excinfo:
            await manager.predict("big", TextRequest("x"))
        message = excinfo.value.message
        assert "needs 150.0 MB (measured)" in message
        assert "whole memory budget is 100.0 MB" in message
        assert manager.describe("big").state == "failed"
        assert manager.snapshot().used_bytes == 0
        assert await manager.predict("ok", TextRequest("x")) is not None


async def test_tracked_bytes_never_exceed_the_budget_under_a_random_workload(
    write_config,
) -> None:
    rng = random.Random(7)
    sizes = {f"m{i}": rng.randint(5, 45) for i in range(8)}
    lines = "".join(
        f"  {name}: {{loader: fake, options: {{size: {size}MB, load_seconds: 0.01, "
        f"predict_seconds: 0.005}}}}\n"
        for name, size in sizes.items()
    )
    # capacity_wait bounds a hang; the machine may be slow (coverage, a busy CI box).
    config = write_config(f"server: {{memory_budget: 100MB, capacity_wait: 30}}\nmodels:\n{lines}")
    async with running(config) as manager:
        samples: list[int] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                snapshot = manager.snapshot()
                samples.append(snapshot.used_bytes)
                # Not sleep(0): a sampler that never rests starves the loads it watches. The
                # budget's own peak (peak_used_bytes, asserted below) sees every reservation.
                await asyncio.sleep(0.001)

        sampler = asyncio.create_task(sample())
        names = list(sizes)
        results: list[object] = []
        for wave in range(10):  # waves of concurrent requests, so models come and go
            tasks = [ask(manager, rng.choice(names), f"{wave}-{i}") for i in range(20)]
            results += await asyncio.gather(*tasks, return_exceptions=True)
        stop.set()
        await sampler
        assert not [r for r in results if isinstance(r, BaseException)]
        assert max(samples) <= 100 * MB
        assert manager.snapshot().peak_used_bytes <= 100 * MB
        loaded = [m for m in manager.snapshot().models if m.state == "loaded"]
        assert manager.snapshot().used_bytes == sum(m.size_bytes for m in loaded)
        assert sum(m.load_count for m in manager.snapshot().models) > len(sizes)


async def test_a_failed_load_is_retried_only_after_its_backoff(write_config) -> None:
    config = write_config(
        "server: {retry_backoff: {initial: 0.3, max: 5}}\n"
        "models:\n"
        "  flaky: {loader: fake, options: {fail_times: 1}}\n"
        "  other: {loader: fake}\n"
    )
    async with running(config) as manager:
        with pytest.raises(ModelFailed) as first:
            await manager.predict("flaky", TextRequest("x"))
        assert "fake load failure 1 of 1" in first.value.message
        info = manager.describe("flaky")
        assert info.state == "failed"
        assert info.error == "RuntimeError: fake load failure 1 of 1"
        with pytest.raises(ModelFailed):
            await manager.predict("flaky", TextRequest("x"))
        assert fake.attempts("flaky") == 1  # no new attempt inside the backoff
        assert await manager.predict("other", TextRequest("x")) is not None
        await asyncio.sleep(0.35)  # time must pass: past the 0.3 s backoff
        assert await manager.predict("flaky", TextRequest("x")) is not None
        assert fake.attempts("flaky") == 2
        assert manager.describe("flaky").error is None


async def test_a_request_waits_a_bounded_time_for_a_slow_load(write_config) -> None:
    config = write_config(
        "server: {request_timeout: 0.2}\nmodels:\n  slow: {loader: fake, options: {gate: gs}}\n"
    )
    async with running(config) as manager:
        with pytest.raises(LoadPending) as excinfo:
            await manager.predict("slow", TextRequest("x"))
        assert excinfo.value.retry_after >= 1
        assert state(manager, "slow") == "loading"  # the load goes on
        fake.open_gate("gs")
        await wait_until(lambda: state(manager, "slow") == "loaded", "the load finishes")


async def test_unknown_model_lists_the_known_names(write_config) -> None:
    config = write_config("models:\n  a: {loader: fake}\n  b: {loader: fake}\n")
    async with running(config) as manager:
        with pytest.raises(UnknownModel) as excinfo:
            await manager.predict("nope", TextRequest("x"))
        assert excinfo.value.message == "model 'nope' is not in the registry; known models: a, b"


async def test_the_event_loop_runs_while_a_load_and_an_inference_block(write_config) -> None:
    config = write_config(
        "models:\n  m: {loader: fake, options: {gate: load, predict_gate: infer}}\n"
    )
    # Should the loader or the model block the loop, these timers open the gates from other
    # threads, so that the test fails on the measured lag instead of hanging.
    failsafes = [
        threading.Timer(BLOCKED_LOOP_FAILSAFE, fake.open_gate, args=(gate,))
        for gate in ("load", "infer")
    ]
    async with running(config) as manager:
        for timer in failsafes:
            timer.start()
        try:
            task = ask(manager, "m")
            await wait_until(lambda: fake.attempts("m") == 1, "the load is inside the loader")
            lag = await loop_lag(ticks=20)
            assert lag < BLOCKED_LOOP_FAILSAFE / 2, f"the loop stalled {lag:.2f} s in a load"
            assert state(manager, "m") == "loading"
            fake.open_gate("load")
            await wait_until(lambda: manager.describe("m").in_flight == 1, "inference blocks")
            lag = await loop_lag(ticks=20)
            assert lag < BLOCKED_LOOP_FAILSAFE / 2, f"the loop stalled {lag:.2f} s in inference"
            assert manager.snapshot().models[0].state == "loaded"
            fake.open_gate("infer")
            await task
        finally:
            for timer in failsafes:
                timer.cancel()


async def test_shutdown_drains_in_flight_requests_and_refuses_new_ones(write_config) -> None:
    config = write_config(
        "models:\n"
        "  a: {loader: fake, options: {size: 5MB, predict_gate: hold}}\n"
        "  b: {loader: fake, options: {size: 5MB}}\n"
    )
    manager = ModelManager(config)
    await manager.start()
    await manager.predict("b", TextRequest("warm"))
    in_flight = ask(manager, "a")
    await wait_until(lambda: manager.describe("a").in_flight == 1, "a request is in flight")
    stopping = asyncio.create_task(manager.shutdown(drain_timeout=20))
    await wait_until(lambda: manager.closing, "shutdown begins")
    with pytest.raises(ShuttingDown):
        await manager.predict("b", TextRequest("late"))
    assert not stopping.done()
    fake.open_gate("hold")
    assert await in_flight is not None
    report = await stopping
    assert report["drained"] == 1
    assert report["abandoned"] == 0
    assert report["unloaded"] == 2
    assert report["freed_bytes"] == 10 * MB
    assert manager.snapshot().used_bytes == 0
    assert {m.state for m in manager.snapshot().models} == {"unloaded"}


async def test_hot_models_preload_and_readiness_follows_them(write_config) -> None:
    config = write_config(
        "models:\n  hot: {loader: fake, hot: true, options: {gate: gh}}\n  lazy: {loader: fake}\n"
    )
    async with running(config) as manager:
        readiness = manager.readiness()
        assert not readiness.ready
        assert readiness.pending == ("hot",)
        fake.open_gate("gh")
        await manager.wait_hot()
        assert manager.readiness() == Readiness(closing=False, pending=(), failed={})
        assert manager.readiness().ready
        assert state(manager, "lazy") == "unloaded"


async def test_a_hot_model_that_fails_keeps_the_server_unready_and_names_the_error(
    write_config,
) -> None:
    config = write_config(
        "models:\n  hot: {loader: fake, hot: true, options: {fail: weights are corrupt}}\n"
    )
    async with running(config) as manager:
        await manager.wait_hot()
        readiness = manager.readiness()
        assert not readiness.ready
        assert readiness.failed == {"hot": "RuntimeError: weights are corrupt"}
