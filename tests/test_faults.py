"""Model code that misbehaves: StopIteration, stuck calls, stuck or replaced loads."""

from __future__ import annotations

import asyncio

import pytest
from support import MB, ask, running, wait_until

from registry.errors import (
    CapacityExceeded,
    InferenceError,
    InferenceTimeout,
    ModelFailed,
    ModelTooLarge,
    UnknownModel,
)
from registry.loaders import fake
from registry.payload import TextRequest

pytestmark = pytest.mark.anyio


async def test_stop_iteration_from_predict_is_the_requests_error(write_config) -> None:
    """StopIteration raised by predict fails the request instead of hanging it."""
    config = write_config(
        "models:\n"
        "  m: {loader: fake, options: {stop_iteration: predict}}\n"
        "  b: {loader: fake, batch: {max_size: 4}, options: {stop_iteration: predict}}\n"
    )
    async with running(config) as manager:
        for name in ("m", "b"):
            with pytest.raises(InferenceError) as excinfo:
                await asyncio.wait_for(manager.predict(name, TextRequest("x")), 10)
            assert "StopIteration" in excinfo.value.message
            assert manager.describe(name).in_flight == 0
        await asyncio.wait_for(manager.unload("m"), 10)  # no lease was left behind
        assert manager.describe("m").state == "unloaded"


async def test_stop_iteration_from_a_loader_is_a_load_failure(write_config) -> None:
    """StopIteration raised by a loader fails the load instead of hanging it."""
    config = write_config("models:\n  m: {loader: fake, options: {stop_iteration: load}}\n")
    async with running(config) as manager:
        with pytest.raises(ModelFailed) as excinfo:
            await asyncio.wait_for(manager.predict("m", TextRequest("x")), 10)
        assert "StopIteration" in excinfo.value.message
        assert manager.describe("m").state == "failed"


async def test_stop_iteration_from_close_still_unloads(write_config) -> None:
    """StopIteration raised by close() does not leave the unload pending."""
    config = write_config(
        "models:\n  m: {loader: fake, options: {size: 5MB, stop_iteration: close}}\n"
    )
    async with running(config) as manager:
        await manager.load("m")
        await asyncio.wait_for(manager.unload("m"), 10)
        assert manager.describe("m").state == "unloaded"
        assert manager.snapshot().used_bytes == 0


async def test_a_backlog_on_one_model_holds_no_worker_another_model_needs(write_config) -> None:
    """Requests queued for a busy model do not take the global worker slots."""
    config = write_config(
        "server: {inference_workers: 2}\n"
        "models:\n"
        "  slow: {loader: fake, options: {predict_gate: hold}}\n"
        "  quick: {loader: fake}\n"
    )
    async with running(config) as manager:
        await manager.predict("quick", TextRequest("warm"))
        backlog = [ask(manager, "slow", f"queued {i}") for i in range(4)]
        await wait_until(lambda: manager.describe("slow").in_flight == 4, "4 requests hold slow")
        assert await asyncio.wait_for(manager.predict("quick", TextRequest("now")), 10) is not None
        fake.open_gate("hold")
        assert len(await asyncio.gather(*backlog)) == 4


async def test_a_call_past_predict_timeout_fails_and_marks_the_model_failed(write_config) -> None:
    """`predict_timeout` answers 504-style, fails the queue, keeps the bytes."""
    config = write_config(
        "server: {memory_budget: 100MB, retry_backoff: {initial: 0.05, max: 0.05}}\n"
        "models:\n"
        "  m: {loader: fake, predict_timeout: 0.2, options: {size: 10MB, predict_gate: hold}}\n"
        "  other: {loader: fake, options: {size: 10MB}}\n"
    )
    async with running(config) as manager:
        await manager.load("m")
        stuck = ask(manager, "m", "stuck")
        # `behind` queues while the stuck call runs: sent at the same instant, its own
        # predict_timeout (counted from its arrival) would end first, and it would get 503 busy.
        await asyncio.sleep(0.05)
        behind = ask(manager, "m", "behind")
        with pytest.raises(InferenceTimeout) as excinfo:
            await asyncio.wait_for(stuck, 10)
        assert excinfo.value.kind == "inference_timeout"
        with pytest.raises(ModelFailed) as queued:
            await asyncio.wait_for(behind, 10)
        assert "predict timed out after 0.2s (predict_timeout)" in queued.value.message
        info = manager.describe("m")
        assert info.state == "failed"
        assert info.abandoned_threads == 1
        snapshot = manager.snapshot()
        assert snapshot.abandoned_threads == 1
        assert snapshot.abandoned[0].kind == "inference"
        assert snapshot.used_bytes == 10 * MB  # the stuck call still holds the model
        assert await manager.predict("other", TextRequest("x")) is not None  # others serve
        await asyncio.sleep(0.1)  # past the backoff: still no second copy while it runs
        with pytest.raises(ModelFailed) as blocked:
            await manager.predict("m", TextRequest("again"))
        assert "previous thread is still running" in blocked.value.message
        assert fake.attempts("m") == 1
        fake.open_gate("hold")
        await wait_until(lambda: manager.snapshot().abandoned_threads == 0, "the call ends")
        assert manager.snapshot().used_bytes == 10 * MB  # only `other` holds memory now
        assert await manager.predict("m", TextRequest("after")) is not None
        assert fake.attempts("m") == 2


async def test_a_stuck_call_is_aborted_when_the_model_can_abort(write_config) -> None:
    """After predict_timeout the registry calls the model's abort() hook."""
    config = write_config(
        "models:\n  m: {loader: fake, predict_timeout: 0.1, options: {predict_hang: true}}\n"
    )
    async with running(config) as manager:
        with pytest.raises(InferenceTimeout):
            await asyncio.wait_for(manager.predict("m", TextRequest("x")), 10)
        await wait_until(lambda: fake.aborts("m") == 1, "abort() is called")
        await wait_until(lambda: manager.snapshot().abandoned_threads == 0, "the call ends")
        assert manager.snapshot().used_bytes == 0


async def test_a_timed_out_load_keeps_its_bytes_until_its_thread_ends(write_config) -> None:
    """No retry and no released bytes while the timed-out loader runs."""
    config = write_config(
        "server: {memory_budget: 100MB, retry_backoff: {initial: 0.05, max: 0.05}}\n"
        "models:\n  m: {loader: fake, load_timeout: 0.2, options: {size: 30MB, gate: gm}}\n"
    )
    async with running(config) as manager:
        with pytest.raises(ModelFailed) as excinfo:
            await manager.predict("m", TextRequest("x"))
        assert "load timed out after 0.2s" in excinfo.value.message
        snapshot = manager.snapshot()
        assert snapshot.used_bytes == 30 * MB
        assert snapshot.abandoned_threads == 1
        assert snapshot.abandoned[0].kind == "load"
        assert manager.describe("m").abandoned_threads == 1
        await asyncio.sleep(0.1)  # past the backoff
        with pytest.raises(ModelFailed) as blocked:
            await manager.predict("m", TextRequest("x"))
        assert "previous thread is still running" in blocked.value.message
        assert fake.attempts("m") == 1
        fake.open_gate("gm")
        await wait_until(lambda: manager.snapshot().abandoned_threads == 0, "the loader ends")
        assert manager.snapshot().used_bytes == 0
        assert await manager.predict("m", TextRequest("x")) is not None
        assert fake.attempts("m") == 2
        assert manager.snapshot().used_bytes == 30 * MB


async def test_replacing_a_model_whose_load_hangs_moves_its_waiters(write_config) -> None:
    """The retired load frees its permit; waiters go to the replacement."""
    text = (
        "server: {memory_budget: 100MB, max_parallel_loads: 1, watch: false}\n"
        "models:\n  m: {loader: fake, options: {size: 30MB, gate: stuck}}\n"
    )
    config = write_config(text)
    async with running(config) as manager:
        waiter = ask(manager, "m")
        await wait_until(lambda: fake.attempts("m") == 1, "the load hangs")
        config.path.write_text(text.replace("gate: stuck", "load_seconds: 0"))
        changes = await manager.reload()
        assert changes.replaced == ["m"]
        assert await asyncio.wait_for(waiter, 10) is not None
        snapshot = manager.snapshot()
        assert snapshot.abandoned_threads == 1
        assert snapshot.abandoned[0].model == "m"
        assert snapshot.abandoned[0].retired is True
        assert snapshot.used_bytes == 60 * MB  # the old loader's memory is real
        fake.open_gate("stuck")
        await wait_until(lambda: manager.snapshot().abandoned_threads == 0, "the loader ends")
        assert manager.snapshot().used_bytes == 30 * MB


async def test_a_model_measured_too_big_for_the_budget_is_not_loaded_again(write_config) -> None:
    """The measured size is kept; a model that can never fit is too large."""
    config = write_config(
        "server: {memory_budget: 100MB}\n"
        "models:\n  big: {loader: fake, size_hint: 10MB, options: {size: 150MB}}\n"
    )
    async with running(config) as manager:
        for _ in range(3):
            with pytest.raises(ModelTooLarge) as excinfo:
                await manager.predict("big", TextRequest("x"))
            assert "needs 150.0 MB (measured)" in excinfo.value.message
        assert fake.attempts("big") == 1
        info = manager.describe("big")
        assert (info.size_bytes, info.size_measured) == (150 * MB, True)


async def test_a_model_measured_bigger_than_the_room_honours_its_backoff(write_config) -> None:
    """No full load per request when the measured size finds no room."""
    config = write_config(
        "server: {memory_budget: 100MB, capacity_wait: 0.1}\n"
        "models:\n"
        "  pin: {loader: fake, pinned: true, options: {size: 60MB}}\n"
        "  m: {loader: fake, size_hint: 10MB, options: {size: 50MB}}\n"
    )
    async with running(config) as manager:
        await manager.predict("pin", TextRequest("x"))
        with pytest.raises(CapacityExceeded) as first:
            await manager.predict("m", TextRequest("x"))
        assert "needs 50.0 MB" in first.value.message
        for _ in range(2):  # inside the backoff: no new load
            with pytest.raises(ModelFailed) as excinfo:
                await manager.predict("m", TextRequest("x"))
            assert "needs 50.0 MB" in excinfo.value.message
            assert excinfo.value.retry_after >= 1
        assert fake.attempts("m") == 1
        assert manager.describe("m").size_bytes == 50 * MB
        assert manager.snapshot().used_bytes == 60 * MB


async def test_removing_a_model_whose_load_hangs_answers_its_waiters(write_config) -> None:
    """Waiters of a removed model's load get a clear error at once."""
    text = (
        "server: {memory_budget: 100MB, watch: false}\n"
        "models:\n  m: {loader: fake, options: {size: 30MB, gate: stuck}}\n  keep: {loader: fake}\n"
    )
    config = write_config(text)
    async with running(config) as manager:
        waiter = ask(manager, "m")
        await wait_until(lambda: fake.attempts("m") == 1, "the load hangs")
        config.path.write_text(
            text.replace("  m: {loader: fake, options: {size: 30MB, gate: stuck}}\n", "")
        )
        await manager.reload()
        with pytest.raises(UnknownModel) as excinfo:
            await asyncio.wait_for(waiter, 10)
        assert "was removed from the registry" in excinfo.value.message
        assert manager.snapshot().abandoned_threads == 1
        fake.open_gate("stuck")
        await wait_until(lambda: manager.snapshot().used_bytes == 0, "its bytes are released")
