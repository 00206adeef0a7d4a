"""Load-and-evict churn leaves nothing behind: what one load and unload cycle may keep."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest
from support import ask, running

from registry.config.schema import Config
from registry.memory.sizes import release_memory


class Cycle:
    """Garbage only the cyclic collector can free: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Collections only where the code asks for them, so that garbage waits for one."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_automatic_gc")
def test_giving_memory_back_after_an_unload_makes_no_garbage() -> None:
    """Every unload gives memory back (malloc_trim through ctypes). Opening libc for each
    call made a new ctypes class each time: cyclic garbage, about 9 objects per unload,
    that a load's freeze then kept for good (what the soak's frozen garbage was made of)."""
    release_memory()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection frees stays in gc.garbage, to look at
    try:
        for _ in range(3):
            release_memory()
        gc.collect()
        made = [type(o).__qualname__ for o in gc.garbage if "ctypes" in type(o).__module__]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert made == []


@pytest.mark.anyio
@pytest.mark.usefixtures("no_automatic_gc")
async def test_garbage_waiting_when_a_model_loads_is_not_frozen_with_it(
    write_config: Callable[[str], Config],
) -> None:
    """A load freezes what the process holds, so that collections skip the new model's many
    objects. Garbage waiting for the collector at that moment must not be frozen with it:
    under sustained traffic the idle-time compaction never comes, and each load would keep
    more for good (the soak's memory creep). After each load, a collection frees it."""
    config = write_config("server: {watch: false}\nmodels:\n  m: {loader: fake}\n")
    async with running(config) as manager:
        for _ in range(5):
            junk = Cycle()
            ref = weakref.ref(junk)
            del junk
            await manager.load("m")
            await manager.unload("m")
            gc.collect()  # what the next automatic collection does: frozen objects are skipped
            assert ref() is None, "garbage that existed when the model loaded was frozen"


def frozen_garbage() -> int:
    """Objects kept only because a load froze them: what a collection of everything frees
    (the process is left frozen again, as the idle-time compaction leaves it)."""
    gc.collect()
    gc.unfreeze()
    try:
        return gc.collect()
    finally:
        gc.freeze()


@pytest.mark.anyio
async def test_many_load_and_unload_cycles_leave_no_threads_or_frozen_garbage_behind(
    write_config: Callable[[str], Config],
) -> None:
    """200 loads and evictions under 4 concurrent clients (4 models, room for 2), with the
    collector running as it does: no object is left frozen that nothing uses (the code
    before kept about 9 per load), and the threads are those of before the churn."""
    entries = "".join(
        f"  m{i}: {{loader: fake, options: {{size: 10MB, load_seconds: 0.001}}}}\n"
        for i in range(4)
    )
    config = write_config(f"server: {{watch: false, memory_budget: 25MB}}\nmodels:\n{entries}")
    async with running(config) as manager:
        await ask(manager, "m0")
        await manager.unload("m0")
        frozen_garbage()
        threads = threading.active_count()
        loads = 0
        for _ in range(1000):  # bounded: a regression that stops evicting fails, not hangs
            if loads >= 200:
                break
            await asyncio.gather(*(ask(manager, f"m{(loads + k) % 4}") for k in range(4)))
            loads = sum(view.load_count for view in manager.snapshot().models) - 1
        assert loads >= 200
        for name in ("m0", "m1", "m2", "m3"):
            await manager.unload(name)
        assert frozen_garbage() < 20
        deadline = asyncio.get_running_loop().time() + 20
        while threading.active_count() > threads:  # retired threads end after their last job
            assert asyncio.get_running_loop().time() < deadline, threading.enumerate()
            await asyncio.sleep(0.01)
