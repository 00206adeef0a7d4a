"""The spare worker: a process started ahead that the next process model's load takes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from support import running, wait_until
from worker_support import children_of, forkserver, worker_children  # noqa: F401 (a fixture)

from registry.config.schema import Config
from registry.manager import ModelManager
from registry.payload import TextRequest
from registry.process import proxy as workers
from registry.process.spare import SpareState

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.usefixtures("forkserver")]

SERVER = """
server:
  memory_budget: 1GB
  watch: false
  load_timeout: 60s
models:
  proc:
    loader: fake
    isolation: process
    options: {size: 1MB}
"""


async def ready_spare() -> SpareState:
    """The spare, once one is started and ready (waited for off the loop)."""
    # At startup the spare is asked for from a thread (with the forkserver): wait for that.
    await wait_until(lambda: workers.spares.state() is not None, "a spare is kept", 60.0)
    spare = await asyncio.to_thread(workers.spares.settle, 60.0)
    assert spare is not None and spare.state == "ready" and spare.pid is not None
    return spare


def worker_pid(manager: ModelManager, name: str) -> int | None:
    worker = manager.describe(name).worker
    return None if worker is None else worker.pid


def exited(pid: int) -> bool:
    """The process is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text.rpartition(")")[2].split()[0] == "Z"


async def test_the_next_cold_load_takes_the_spare_and_a_new_one_replaces_it(
    write_config: Callable[[str], Config],
) -> None:
    """A process model's cold load runs in the spare (its worker's pid is the spare's), a
    new spare is started after it, and GET /models shows the spare with its own memory."""
    async with running(write_config(SERVER)) as manager:
        spare = await ready_spare()
        shown = manager.snapshot().spare_worker
        assert shown is not None and shown.pid == spare.pid and shown.state == "ready"
        assert shown.private_bytes is not None and shown.private_bytes > 0
        assert await manager.predict("proc", TextRequest(inputs="x"))
        assert worker_pid(manager, "proc") == spare.pid
        assert manager.snapshot().used_bytes == manager.describe("proc").size_bytes
        replacement = await ready_spare()
        assert replacement.pid != spare.pid
        assert sorted(children_of(workers.forkserver_pid() or 0)) == sorted(
            [spare.pid, replacement.pid]
        )
        # Unloaded and loaded again: the load takes the replacement.
        await manager.unload("proc")
        await manager.load("proc")
        assert worker_pid(manager, "proc") == replacement.pid


async def test_shutdown_ends_the_spare_and_leaves_no_process(
    write_config: Callable[[str], Config],
) -> None:
    """After shutdown no worker is left: neither the model's nor the spare."""
    async with running(write_config(SERVER)) as manager:
        assert await manager.predict("proc", TextRequest(inputs="x"))
        spare = await ready_spare()
    assert workers.spares.state() is None
    assert workers.live_pids(spares=True) == []
    assert children_of(workers.forkserver_pid() or 0) == []
    assert spare.pid is not None and exited(spare.pid)


async def test_a_spare_that_dies_while_idle_is_replaced(
    write_config: Callable[[str], Config],
) -> None:
    """SIGKILL the idle spare: it is reaped and a new one started; the next load works."""
    async with running(write_config(SERVER)) as manager:
        spare = await ready_spare()
        deaths = workers.spares.deaths
        assert spare.pid is not None
        os.kill(spare.pid, signal.SIGKILL)
        await wait_until(lambda: workers.spares.deaths == deaths + 1, "the death is noticed")
        replacement = await ready_spare()
        assert replacement.pid != spare.pid
        assert spare.pid not in workers.live_pids(spares=True)
        assert await manager.predict("proc", TextRequest(inputs="x"))
        assert worker_pid(manager, "proc") == replacement.pid


async def test_a_load_never_uses_a_dead_spare(write_config: Callable[[str], Config]) -> None:
    """A spare killed just before a load: the load runs in a live worker, never hangs, and
    whichever noticed the death first (the load or the keeper) leaves one spare."""
    async with running(write_config(SERVER)) as manager:
        spare = await ready_spare()
        assert spare.pid is not None
        os.kill(spare.pid, signal.SIGKILL)
        await wait_until(lambda: exited(spare.pid or 0), "the spare has exited")
        assert await manager.predict("proc", TextRequest(inputs="x"))
        pid = worker_pid(manager, "proc")
        assert pid is not None and pid != spare.pid and not exited(pid)
        assert worker_children() == [pid]
        assert (await ready_spare()).pid not in (spare.pid, pid)


async def test_no_spare_without_a_process_model(write_config: Callable[[str], Config]) -> None:
    """A config with thread models only starts no spare (nor a forkserver for it)."""
    config = write_config(
        "server:\n  watch: false\nmodels:\n  thr:\n    loader: fake\n    isolation: thread\n"
    )
    await asyncio.to_thread(workers.spares.stop)  # as a shutdown before this test leaves it
    async with running(config) as manager:
        assert not workers.warm_for(config.models, config.server, config.base_dir)
        assert await manager.predict("thr", TextRequest(inputs="x"))
        assert manager.snapshot().spare_worker is None
        assert workers.spares.state() is None
        assert workers.live_pids(spares=True) == []


async def test_a_spare_asked_for_before_a_shutdown_is_not_started_after_it() -> None:
    """The startup's request for a spare (from the thread that starts the forkserver) that
    arrives after the shutdown has stopped the spares starts none."""
    since = workers.spares.stops  # what warm_for reads before starting the forkserver
    await asyncio.to_thread(workers.spares.stop)  # the shutdown comes first
    workers.spares.enable(since)
    assert workers.spares.state() is None
    assert workers.live_pids(spares=True) == []
