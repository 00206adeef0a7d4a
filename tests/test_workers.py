"""Process models: real worker processes, driven through the real ModelManager."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
from support import running, wait_until
from worker_support import forkserver, worker_children  # noqa: F401 (a fixture)

from registry.config.schema import Config
from registry.errors import InferenceTimeout, ModelFailed, WorkerDied
from registry.manager import ModelManager
from registry.payload import TextRequest
from registry.process import proxy as workers
from registry.slot import State

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.usefixtures("forkserver")]

SERVER = """
server:
  memory_budget: 2GB
  watch: false
  retry_backoff: {initial: 0.05, max: 0.05}
  load_timeout: 60s
  request_timeout: 120s
models:
"""


def entry(name: str, **options: object) -> str:
    """A fake process model's YAML entry (options in flow style)."""
    opts = ", ".join(
        f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in options.items()
    )
    return f"  {name}:\n    loader: fake\n    isolation: process\n    options: {{{opts}}}\n"


def request(text: str) -> TextRequest:
    return TextRequest(inputs=text)


def worker_pid(manager: ModelManager, name: str) -> int:
    pid = manager.describe(name).worker.pid
    assert isinstance(pid, int)
    return pid


async def test_process_model_answers_like_a_thread_model(
    write_config: Callable[[str], Config],
) -> None:
    """A fake model answers the same in a worker as in a thread; GET /models shows the worker."""
    config = write_config(
        SERVER
        + entry("proc", size="2MB")
        + "  thr:\n    loader: fake\n    isolation: thread\n    options: {size: 2MB}\n"
    )
    async with running(config) as manager:
        for text in ("hello", "world"):
            proc = await manager.predict("proc", request(text))
            thr = await manager.predict("thr", request(text))
            assert proc == thr
        info = manager.describe("proc")
        assert info.isolation == "process"
        assert info.worker.param_bytes == 2_000_000
        assert info.worker.private_bytes > 0
        assert info.size_bytes == max(2_000_000, info.worker.private_bytes)
        assert manager.describe("thr").isolation == "thread"
        assert worker_children() == [worker_pid(manager, "proc")]
    assert worker_children() == []


@pytest.mark.parametrize(("crash", "how"), [("SIGSEGV", "signal SIGSEGV"), ("exit:3", "code 3")])
async def test_crash_fails_its_request_then_the_model_reloads(
    write_config: Callable[[str], Config], crash: str, how: str
) -> None:
    """Crash: a 5xx naming how the worker died, model failed, bytes released, reload later."""
    config = write_config(
        SERVER
        + entry("crashy", size="1MB", crash=crash, crash_on="boom")
        + "  other:\n    loader: fake\n    isolation: thread\n"
    )
    async with running(config) as manager:
        await manager.predict("crashy", request("fine"))
        await manager.predict("other", request("fine"))
        first = worker_pid(manager, "crashy")
        with pytest.raises(WorkerDied) as info:
            await manager.predict("crashy", request("boom"))
        assert how in info.value.message and "died" in info.value.message
        described = manager.describe("crashy")
        assert described.state == "failed"
        assert described.worker_deaths == 1
        assert how in described.error
        assert manager.snapshot().used_bytes == manager.describe("other").size_bytes
        assert worker_children() == []
        assert await manager.predict("other", request("fine"))  # nothing else noticed
        await wait_until(lambda: manager.describe("crashy").state == "failed", "failed")
        await asyncio.sleep(0.1)  # past the 0.05 s backoff
        assert await manager.predict("crashy", request("fine"))
        described = manager.describe("crashy")
        assert described.load_count == 2
        assert worker_children() == [worker_pid(manager, "crashy")] != [first]


async def test_crash_while_loading_fails_the_load(write_config: Callable[[str], Config]) -> None:
    """A loader that calls os._exit fails the load with the exit code; no worker remains."""
    config = write_config(SERVER + entry("dies", crash="exit:7", crash_in="load"))
    async with running(config) as manager:
        with pytest.raises(Exception, match="exited with code 7"):
            await manager.predict("dies", request("x"))
        assert manager.describe("dies").state == "failed"
        assert manager.snapshot().used_bytes == 0
        assert worker_children() == []


async def test_hung_load_is_killed_at_load_timeout(write_config: Callable[[str], Config]) -> None:
    """Hang in load: the worker is killed at load_timeout, its bytes released, no process left."""
    config = write_config(SERVER + entry("stuck", size="5MB", hang=True) + "    load_timeout: 2s\n")
    async with running(config) as manager:
        with pytest.raises(Exception, match="load timed out after 2s"):
            await manager.predict("stuck", request("x"))
        assert manager.describe("stuck").state == "failed"
        assert manager.snapshot().used_bytes == 0
        assert worker_children() == []
        assert workers.live_pids() == []


async def test_hung_inference_is_killed_at_predict_timeout(
    write_config: Callable[[str], Config],
) -> None:
    """Hang in predict: 504-class error, the worker killed and reaped, the model reloads."""
    config = write_config(
        SERVER + entry("slow", size="5MB", hang_on="zzz") + "    predict_timeout: 1s\n"
    )
    async with running(config) as manager:
        await manager.predict("slow", request("ok"))
        with pytest.raises(InferenceTimeout, match="predict_timeout"):
            await manager.predict("slow", request("zzz"))
        assert manager.describe("slow").state == "failed"
        # Released once the killed worker is reaped and its call's thread has ended.
        await wait_until(lambda: manager.snapshot().used_bytes == 0, "the bytes are released")
        assert worker_children() == []
        await asyncio.sleep(0.1)  # past the 0.05 s backoff
        assert await manager.predict("slow", request("ok"))
        assert worker_children() == [worker_pid(manager, "slow")]


async def test_leaking_worker_is_recycled(write_config: Callable[[str], Config]) -> None:
    """Leak: past its reservation by worker_memory_margin the worker is recycled and counted."""
    config = write_config(
        SERVER.replace("watch: false", "watch: false\n  worker_memory_margin: 0.5")
        + entry("leaky", size="1MB", leak="40MB")
    )
    async with running(config) as manager:
        await manager.load("leaky")
        first = worker_pid(manager, "leaky")
        for i in range(30):
            if manager.describe("leaky").recycles:
                break
            if manager.describe("leaky").state == "loaded":
                await manager.predict("leaky", request(f"x{i}"))
            await asyncio.sleep(0.25)  # the worker measures itself at most every 0.2 s
        assert manager.describe("leaky").recycles == 1
        await wait_until(lambda: manager.describe("leaky").state == "loaded", "reloaded")
        assert worker_children() == [worker_pid(manager, "leaky")] != [first]


async def test_unload_returns_the_workers_memory(write_config: Callable[[str], Config]) -> None:
    """Unloading a process model ends its worker: every byte it held goes with it."""
    config = write_config(SERVER + entry("big", size="80MB", allocate=True))
    async with running(config) as manager:
        await manager.predict("big", request("x"))
        pid = worker_pid(manager, "big")
        assert manager.describe("big").worker.private_bytes >= 80_000_000
        await manager.unload("big")
        assert manager.describe("big").state == "unloaded"
        assert manager.snapshot().used_bytes == 0
        assert pid not in worker_children()
        assert worker_children() == []


async def test_many_failures_leave_one_worker_per_loaded_model(
    write_config: Callable[[str], Config],
) -> None:
    """After crashes, timeouts, reloads and unloads: exactly one worker per loaded model."""
    config = write_config(
        SERVER
        + entry("a", crash="SIGKILL", crash_on="boom", hang_on="zzz")
        + "    predict_timeout: 1s\n"
        + entry("b")
    )
    async with running(config) as manager:
        for text in ("boom", "zzz", "ok", "boom", "ok"):
            await asyncio.sleep(0.1)  # past the 0.05 s backoff of the last failure
            with contextlib.suppress(WorkerDied, InferenceTimeout, ModelFailed):  # in backoff
                await manager.predict("a", request(text))
            await manager.predict("b", request("ok"))
        loaded = [n for n in ("a", "b") if manager.describe(n).state == State.LOADED]
        assert sorted(worker_children()) == sorted(worker_pid(manager, n) for n in loaded)
        assert "b" in loaded


async def test_a_custom_loader_runs_in_a_worker_by_default(
    tmp_path: Path, write_config: Callable[[str], Config]
) -> None:
    """isolation auto: a custom loader that calls os._exit fails its load, not the server."""
    (tmp_path / "dying_loader.py").write_text("import os\n\ndef load(ctx):\n    os._exit(3)\n")
    config = write_config(
        SERVER + "  dies: {loader: 'dying_loader:load'}\n  fine: {loader: fake}\n"
    )
    async with running(config) as manager:
        with pytest.raises(Exception, match="exited with code 3"):
            await manager.predict("dies", request("x"))
        assert manager.describe("dies").isolation == "process"
        assert manager.describe("dies").state == "failed"
        assert await manager.predict("fine", request("x"))
        assert manager.describe("fine").isolation == "thread"
