"""Live models.yaml: edits apply as a difference, invalid edits change nothing; TTL; timeouts."""

from __future__ import annotations

import asyncio
import os
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from support import MB, ask, running, states, wait_until

from registry import reaper
from registry.config.file import load_config
from registry.config.schema import ModelSpec
from registry.errors import (
    BusyQueueFull,
    ConfigError,
    LoadQueueFull,
    ModelFailed,
    QueueFull,
    UnknownModel,
)
from registry.loaders import fake
from registry.manager import ModelManager

pytestmark = pytest.mark.anyio
BASE = """\
server: {memory_budget: 100MB, watch: false, idle_ttl: 0}
models:
  keep: {loader: fake, options: {size: 10MB}}
  gone: {loader: fake, options: {size: 10MB, predict_gate: gone}}
  swap: {loader: fake, options: {size: 10MB, label: v1}}
  flags: {loader: fake, options: {size: 10MB}}
"""


def manager_for(path: Path) -> AbstractAsyncContextManager[ModelManager]:
    return running(load_config(path))


async def test_an_edit_applies_only_the_difference(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(BASE)
    async with manager_for(path) as manager:
        for name in ("keep", "swap", "flags"):
            await ask(manager, name)
        keep_before = manager.describe("keep")
        path.write_text(
            BASE.replace("  gone: {loader: fake, options: {size: 10MB, predict_gate: gone}}\n", "")
            .replace("label: v1", "label: v2")
            .replace("flags: {loader: fake,", "flags: {loader: fake, pinned: true, idle_ttl: 1h,")
            + "  new: {loader: fake, hot: true, options: {size: 5MB}}\n"
        )
        changes = await manager.reload()
        assert changes.added == ["new"]
        assert changes.removed == ["gone"]
        assert changes.replaced == ["swap"]
        assert changes.updated == ["flags"]
        assert changes.unchanged == ["keep"]
        await wait_until(lambda: states(manager).get("new") == "loaded", "hot new model loads")
        assert states(manager) == {
            "flags": "loaded",  # flags changed in place: still loaded, not reloaded
            "keep": "loaded",
            "new": "loaded",
            "swap": "unloaded",  # the old version unloaded; the new one loads on demand
        }
        assert manager.describe("keep").load_count == keep_before.load_count == 1
        assert manager.describe("flags").pinned is True
        assert manager.describe("flags").load_count == 1
        await ask(manager, "swap")
        assert manager.describe("swap").load_count == 1  # a new slot: its first load
        with pytest.raises(UnknownModel):
            await ask(manager, "gone")
        assert manager.snapshot().used_bytes == 35 * MB


async def test_an_invalid_edit_changes_nothing_and_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(BASE)
    async with manager_for(path) as manager:
        await ask(manager, "keep")
        before = states(manager)
        path.write_text(BASE.replace("swap: {loader: fake,", "swap: {loader: fake, hott: true,"))
        with pytest.raises(ConfigError):
            await manager.reload()
        snapshot = manager.snapshot()
        assert states(manager) == before
        assert snapshot.config_error is not None
        assert snapshot.config_error.problems == (
            "model 'swap', field 'hott': unknown key; did you mean 'hot'? allowed keys: "
            + ", ".join(sorted(ModelSpec.model_fields)),
        )
        assert str(path) in snapshot.config_error.message
        assert manager.readiness().ready is True
        await ask(manager, "swap")  # the running registry still serves
        path.write_text(BASE)
        await manager.reload()
        assert manager.snapshot().config_error is None


@pytest.mark.parametrize(
    "bad",
    [
        "models:\n  keep: {loader: fake, options: {size: 10MB}\n",  # half-written
        "",  # truncated to nothing
        "server: {memory_budget: 100MB}\nmodels:\n  big: {loader: fake, options: {size: 1GB}}\n",
    ],
)
async def test_a_partial_or_oversized_file_is_never_applied(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(BASE)
    async with manager_for(path) as manager:
        path.write_text(bad)
        if bad:
            with pytest.raises(ConfigError):
                await manager.reload()
            assert sorted(manager.names()) == ["flags", "gone", "keep", "swap"]
        else:
            # An empty file is valid YAML for "no models": truncate-and-write editors pass
            # through it, so the watcher waits for the file to settle before reading.
            assert load_config(path).models == {}


async def test_a_removed_model_finishes_its_in_flight_request(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(BASE)
    async with manager_for(path) as manager:
        in_flight = ask(manager, "gone")
        await wait_until(lambda: manager.describe("gone").in_flight == 1, "gone is in use")
        path.write_text(
            BASE.replace("  gone: {loader: fake, options: {size: 10MB, predict_gate: gone}}\n", "")
        )
        changes = await manager.reload()
        assert changes.removed == ["gone"]
        assert "gone" not in manager.names()
        assert manager.snapshot().used_bytes == 10 * MB  # still held by the request
        fake.open_gate("gone")
        assert await in_flight is not None
        await wait_until(lambda: manager.snapshot().used_bytes == 0, "gone unloads")


async def test_the_watcher_applies_a_saved_edit_and_a_rename_over(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(BASE.replace("watch: false", "watch: true, watch_interval: 0.05"))
    async with manager_for(path) as manager:
        text = path.read_text() + "  added: {loader: fake}\n"
        path.write_text(text)  # truncate and write
        await wait_until(lambda: "added" in manager.names(), "the edit applies")
        replacement = tmp_path / ".models.yaml.swp"
        replacement.write_text(text + "  renamed: {loader: fake}\n")
        os.replace(replacement, path)  # rename over, as vim and most editors save
        await wait_until(lambda: "renamed" in manager.names(), "the rename applies")
        path.write_text(text.replace("added: {loader: fake}", "added: {loader: fake"))
        await wait_until(lambda: manager.snapshot().config_error is not None, "error shown")
        assert "renamed" in manager.names()  # the broken save changed nothing


async def test_a_lower_budget_evicts_idle_models(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    text = BASE.replace("idle_ttl: 0}", "idle_ttl: 0, eviction: lru}")  # "most recent stays"
    path.write_text(text)
    async with manager_for(path) as manager:
        for name in ("keep", "swap", "flags"):
            await ask(manager, name)
        path.write_text(text.replace("memory_budget: 100MB", "memory_budget: 15MB"))
        changes = await manager.reload()
        assert changes.server_changed == ["memory_budget"]
        await wait_until(lambda: manager.snapshot().used_bytes <= 15 * MB, "evictions")
        assert manager.snapshot().budget_bytes == 15 * MB
        assert list(states(manager).values()).count("loaded") == 1
        assert states(manager)["flags"] == "loaded"  # the most recently used stays


async def test_an_idle_model_is_unloaded_after_its_ttl_unless_pinned(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false}\n"
        "models:\n"
        "  short: {loader: fake, idle_ttl: 0.3}\n"
        "  pinned: {loader: fake, idle_ttl: 0.3, pinned: true}\n"
        "  forever: {loader: fake}\n"
    )
    async with manager_for(path) as manager:
        for name in ("short", "pinned", "forever"):
            await ask(manager, name)
        await wait_until(lambda: states(manager)["short"] == "unloaded", "the TTL passes")
        # Time must pass: pinned's TTL too, and two more reaper rounds (it keeps no count).
        await asyncio.sleep(0.3 + 2 * reaper.TICK)
        assert states(manager) == {"forever": "loaded", "pinned": "loaded", "short": "unloaded"}


async def test_a_hung_load_times_out_and_its_late_finish_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false, memory_budget: 100MB}\n"
        "models:\n"
        "  stuck: {loader: fake, load_timeout: 0.2, options: {size: 40MB, hang: true, gate: g}}\n"
    )
    async with manager_for(path) as manager:
        with pytest.raises(ModelFailed) as excinfo:
            await ask(manager, "stuck")
        assert "load timed out after 0.2s (load_timeout)" in excinfo.value.message
        # The loader still runs, so its memory stays reserved.
        assert manager.snapshot().used_bytes == 40 * 1000**2
        fake.open_gate("g")  # the stuck thread now finishes: its model is thrown away
        await wait_until(lambda: manager.snapshot().abandoned_threads == 0, "it ends")
        assert manager.describe("stuck").state == "failed"
        assert manager.snapshot().used_bytes == 0


async def test_admin_load_retries_a_failed_model_at_once(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false, retry_backoff: {initial: 1h, max: 1h}}\n"
        "models:\n  flaky: {loader: fake, options: {fail_times: 1}}\n"
    )
    async with manager_for(path) as manager:
        with pytest.raises(ModelFailed):
            await ask(manager, "flaky")
        with pytest.raises(ModelFailed):  # inside its one-hour backoff
            await ask(manager, "flaky")
        assert fake.attempts("flaky") == 1
        info = await manager.load("flaky")
        assert info.state == "loaded" and fake.attempts("flaky") == 2


async def test_admin_unload_waits_for_in_flight_requests(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(BASE)
    async with manager_for(path) as manager:
        in_flight = ask(manager, "gone")
        await wait_until(lambda: manager.describe("gone").in_flight == 1, "gone is in use")
        unloading = asyncio.create_task(manager.unload("gone"))
        # Proving a negative: the unload had time to finish had it not waited for the lease.
        await asyncio.sleep(0.05)
        assert not unloading.done() and manager.describe("gone").state == "loaded"
        fake.open_gate("gone")
        assert await in_flight is not None
        assert (await unloading).state == "unloaded"


@pytest.mark.parametrize(
    ("gate", "waiting", "full", "kind"),
    [
        ("gate", "queued", LoadQueueFull, "loading"),
        ("predict_gate", "in_flight", BusyQueueFull, "busy"),
    ],
    ids=["for-a-load", "for-a-loaded-model"],
)
async def test_the_queue_limit_answers_503_with_retry_after(
    tmp_path: Path, gate: str, waiting: str, full: type[QueueFull], kind: str
) -> None:
    """max_queue bounds the requests waiting for a load, and those holding a loaded model."""
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false}\n"
        f"models:\n  m: {{loader: fake, max_queue: 2, options: {{{gate}: g, size: 10MB}}}}\n"
    )
    async with manager_for(path) as manager:
        asked = [ask(manager, "m") for _ in range(2)]
        await wait_until(lambda: getattr(manager.describe("m"), waiting) == 2, "the queue fills")
        with pytest.raises(full) as excinfo:
            await ask(manager, "m")
        assert type(excinfo.value) is full and excinfo.value.kind == kind
        assert excinfo.value.retry_after >= 1
        assert f"model 'm' is {kind}: 2 requests already wait for it (max_queue 2)" in (
            excinfo.value.message
        )
        fake.open_gate("g")
        await asyncio.gather(*asked)


async def test_admin_unload_with_no_drain_time_unloads_an_idle_model(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("server: {watch: false, drain_timeout: 0}\nmodels:\n  m: {loader: fake}\n")
    async with manager_for(path) as manager:
        await ask(manager, "m")
        assert (await manager.unload("m")).state == "unloaded"
        assert await ask(manager, "m") is not None  # and it loads again on demand
        assert manager.describe("m").load_count == 2


async def test_a_hot_model_that_found_no_room_is_retried_until_ready(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    text = (
        "server: {watch: false, memory_budget: 100MB, capacity_wait: 0.1,"
        " retry_backoff: {initial: 0.1}}\n"
        "models:\n  h: {loader: fake, hot: true, options: {size: 60MB, predict_gate: h, v: 1}}\n"
    )
    path.write_text(text)
    async with manager_for(path) as manager:
        await manager.wait_hot()
        in_flight = ask(manager, "h")
        await wait_until(lambda: manager.describe("h").in_flight == 1, "v1 is in use")
        path.write_text(text.replace("v: 1", "v: 2"))
        assert (await manager.reload()).replaced == ["h"]
        # v2 cannot fit while v1 serves its request: it finds no room, and is retried.
        await wait_until(lambda: manager.describe("h").error is not None, "no room")
        assert manager.readiness().pending == ("h",)
        fake.open_gate("h")
        await in_flight
        await wait_until(lambda: manager.readiness().ready, "v2 loads and the server is ready")
        assert manager.describe("h").state == "loaded"
        assert manager.snapshot().used_bytes == 60 * MB


async def test_a_loader_that_calls_sys_exit_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "exiting_loader.py").write_text("import sys\n\ndef load(ctx):\n    sys.exit(2)\n")
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false}\n"
        "models:\n"
        "  exits: {loader: 'exiting_loader:load', isolation: thread}\n"
        "  fine: {loader: fake}\n"
    )
    async with manager_for(path) as manager:
        with pytest.raises(ModelFailed) as excinfo:
            await ask(manager, "exits")
        assert "SystemExit(2) raised in a worker thread" in excinfo.value.message
        assert manager.describe("exits").state == "failed"
        assert await ask(manager, "fine") is not None
