"""Helpers shared by the tests: a running manager, polling, config errors, demo inputs.

What the benchmarks share with the tests (server processes, the demo models and their
builders) is in devkit/.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from devkit.demo import REPO, builders
from devkit.server import Process, serve
from registry.config.file import load_config
from registry.config.schema import Config
from registry.errors import ConfigError
from registry.loaders import fake
from registry.manager import ModelManager
from registry.payload import TextRequest

ROOT = REPO
MB = 1000**2


def ask(manager: ModelManager, name: str, text: str = "x") -> asyncio.Task[object]:
    """A predict request as a task, started now (await it for the answer)."""
    return asyncio.get_running_loop().create_task(manager.predict(name, TextRequest(text)))


def states(manager: ModelManager) -> dict[str, str]:
    """Every model's state, by name."""
    return {m.name: m.state for m in manager.snapshot().models}


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[ModelManager]:
    """A started manager, shut down at the end (gated fake loads are released first)."""
    manager = ModelManager(config)
    await manager.start()
    try:
        yield manager
    finally:
        fake.reset()
        await manager.shutdown(drain_timeout=5)


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll the loop until `predicate` holds; the limit only turns a hang into a failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


def wait_for(
    predicate: Callable[[], object], what: str, limit: float = 30.0, poll: float = 0.02
) -> None:
    """Poll (in this thread) until `predicate` holds; the limit only turns a hang into a failure.

    For tests outside an event loop: a real server process, its log, its children.
    """
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g}s waiting until {what}")
        time.sleep(poll)


@contextmanager
def served(
    tmp_path: Path,
    text: str,
    *args: str,
    env: dict[str, str] | None = None,
    host: str | None = "127.0.0.1",
) -> Iterator[Process]:
    """`text` as tmp_path/models.yaml, served by a real process (devkit.server.serve, with
    `args`, `env` and `host`) and live; stopped by its PID at the end."""
    config = tmp_path / "models.yaml"
    config.write_text(text)
    with serve(config, *args, env=env, host=host) as process:
        process.wait_live()
        yield process


def anything(key: str) -> bool:
    """An `evictable` that lets every model go."""
    return True


BLOCKED_LOOP_FAILSAFE = 5.0  # seconds: how long a test lets a blocked loop stall


async def loop_lag(ticks: int, interval: float = 0.005) -> float:
    """The longest gap between `ticks` short sleeps beyond their own length, by timestamps.

    A loop that is free answers within milliseconds; a loop blocked by a thread's work (a
    load or an inference run on the loop) stalls until that work ends, and the gap shows it.
    """
    loop = asyncio.get_running_loop()
    worst = 0.0
    for _ in range(ticks):
        before = loop.time()
        await asyncio.sleep(interval)
        worst = max(worst, loop.time() - before - interval)
    return worst


def problems_of(tmp_path: Path, text: str, *, check_sizes: bool = True) -> list[str]:
    """Write models.yaml, load it, and return the ConfigError's problems."""
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, check_sizes=check_sizes)
    error = info.value
    assert error.path == str(path)
    assert str(error).startswith(f"invalid config {path}:\n")
    assert str(error).splitlines()[1:] == [f"  - {p}" for p in error.problems]
    return error.problems


def digit_png(index: int) -> bytes:
    """The PNG a user would upload for scikit-learn digit #index."""
    buffer = io.BytesIO()
    builders().digit_image(index).save(buffer, format="PNG")
    return buffer.getvalue()
