"""The event stream: ids, resume, bounded subscribers, and the events the manager emits."""

from __future__ import annotations

import asyncio

import pytest
from support import running, wait_until

from registry.errors import ConfigError
from registry.events import EventBus, EventKind, UnloadReason

pytestmark = pytest.mark.anyio


async def drain(subscription) -> list:
    """Every event queued now (a short wait ends it)."""
    out = []
    while (event := await subscription.next(within=0.05)) is not None:
        out.append(event)
    return out


async def test_ids_increase_and_a_client_resumes_after_the_last_id_it_saw() -> None:
    bus = EventBus(history=10)
    first = [bus.emit(EventKind.LOADING, "a"), bus.emit(EventKind.LOADED, "a", bytes=5)]
    assert [e.id for e in first] == [1, 2]
    bus.emit(EventKind.LOADING, "b")
    resumed = await drain(bus.subscribe(after=2))
    assert [(e.id, e.kind, e.model) for e in resumed] == [(3, EventKind.LOADING, "b")]
    assert first[1].as_dict() == {
        "id": 2,
        "type": "loaded",
        "model": "a",
        "time": round(first[1].time, 3),
        "bytes": 5,
    }


async def test_an_id_from_before_a_restart_replays_everything_kept() -> None:
    bus = EventBus()
    bus.emit(EventKind.LOADING, "a")
    bus.emit(EventKind.LOADED, "a")
    assert [e.id for e in await drain(bus.subscribe(after=500))] == [1, 2]


async def test_resuming_past_the_kept_history_starts_with_a_gap() -> None:
    bus = EventBus(history=3)
    for _ in range(10):
        bus.emit(EventKind.LOADING, "a")
    events = await drain(bus.subscribe(after=2))
    assert events[0].kind is EventKind.GAP
    assert events[0].data == {"missed": 5}  # ids 3..7 are no longer kept
    assert [e.id for e in events[1:]] == [8, 9, 10]


async def test_a_slow_subscriber_loses_its_oldest_events_and_gets_a_gap_not_the_emitter() -> None:
    bus = EventBus(queue=4)
    slow = bus.subscribe()
    fast = bus.subscribe()
    for i in range(10):
        bus.emit(EventKind.LOADED, f"m{i}")  # never waits, whatever the readers do
        assert (await fast.next(within=1)).model == f"m{i}"
    events = await drain(slow)
    assert events[0].kind is EventKind.GAP and events[0].data == {"missed": 6}
    assert [e.model for e in events[1:]] == ["m6", "m7", "m8", "m9"]


async def test_close_ends_every_subscription_and_later_ones_at_once() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    waiter = asyncio.create_task(subscription.next(within=30))
    await asyncio.sleep(0)  # one loop turn: the waiter runs up to its wait (FIFO, not timing)
    assert not waiter.done()
    bus.close()
    assert await asyncio.wait_for(waiter, 5) is None
    assert subscription.closed and bus.subscribers == 0
    assert bus.subscribe().closed


async def test_the_manager_emits_each_state_change_with_its_reason(write_config) -> None:
    config = write_config(
        "server: {memory_budget: 100MB, watch: false, idle_ttl: 0, eviction: lru}\n"
        "models:\n"
        "  a: {loader: fake, options: {size: 60MB}}\n"
        "  b: {loader: fake, options: {size: 60MB}}\n"
        "  c: {loader: fake, idle_ttl: 0.3, options: {size: 10MB}}\n"
        "  bad: {loader: fake, options: {size: 1MB, fail: boom}}\n"
    )
    async with running(config) as manager:
        subscription = manager.events.subscribe()
        await manager.load("a")
        await manager.load("b")  # evicts a (LRU) to fit
        await wait_until(lambda: manager.describe("a").state == "unloaded", "a is evicted")
        await manager.load("c")
        await wait_until(lambda: manager.describe("c").state == "unloaded", "c's TTL ends")
        await manager.unload("b")
        with pytest.raises(Exception, match="boom"):
            await manager.load("bad")
        events = [(e.kind, e.model, e.data.get("reason")) for e in await drain(subscription)]
        assert events == [
            (EventKind.LOADING, "a", None),
            (EventKind.LOADED, "a", None),
            (EventKind.LOADING, "b", None),
            (EventKind.EVICTED, "a", "lru"),
            (EventKind.LOADED, "b", None),
            (EventKind.LOADING, "c", None),
            (EventKind.LOADED, "c", None),
            (EventKind.UNLOADED, "c", "ttl"),
            (EventKind.UNLOADED, "b", "admin"),
            (EventKind.LOADING, "bad", None),
            (EventKind.FAILED, "bad", None),
        ]
        evicted = next(e for e in manager.events.recent() if e.kind is EventKind.EVICTED)
        assert evicted.data["freed_bytes"] == 60_000_000
        failed = manager.events.recent(1)[0]
        assert failed.data["error"] == "RuntimeError: boom"
        stats = manager.stats.of("a")
        assert stats.loads == 1 and stats.unloads == {UnloadReason.LRU.value: 1}
        assert manager.stats.of("bad").failures == 1


async def test_reloads_are_events_applied_or_refused(write_config, tmp_path) -> None:
    text = "server: {memory_budget: 100MB, watch: false}\nmodels:\n  a: {loader: fake}\n"
    config = write_config(text)
    async with running(config) as manager:
        subscription = manager.events.subscribe()
        (tmp_path / "models.yaml").write_text(text + "  b: {loader: fake}\n")
        await manager.reload()
        (tmp_path / "models.yaml").write_text(text + "  c: {loader: fake, bogus: 1}\n")
        with pytest.raises(ConfigError):
            await manager.reload()
        applied, refused = await drain(subscription)
        assert applied.kind is EventKind.CONFIG_APPLIED and applied.data["added"] == ["b"]
        assert refused.kind is EventKind.CONFIG_REFUSED
        assert any("bogus" in problem for problem in refused.data["problems"])


async def test_a_lowered_budget_and_a_removal_unload_with_their_reasons(
    write_config, tmp_path
) -> None:
    only_a = "models:\n  a: {loader: fake, options: {size: 30MB}}\n"
    models = only_a + "  b: {loader: fake, options: {size: 30MB}}\n"
    server = "watch: false, eviction: lru"  # "a is evicted": the least recently used goes
    config = write_config(f"server: {{memory_budget: 100MB, {server}}}\n{models}")
    async with running(config) as manager:
        await manager.load("a")
        await manager.load("b")
        subscription = manager.events.subscribe()
        path = tmp_path / "models.yaml"
        path.write_text(f"server: {{memory_budget: 40MB, {server}}}\n{models}")
        await manager.reload()
        await wait_until(lambda: manager.snapshot().used_bytes <= 40e6, "a is evicted")
        path.write_text(f"server: {{memory_budget: 40MB, {server}}}\n{only_a}")
        await manager.reload()
        await wait_until(lambda: "b" not in manager.names(), "b is removed")
        await wait_until(lambda: manager.snapshot().used_bytes == 0, "b is unloaded")
        events = [(e.kind, e.model, e.data.get("reason")) for e in await drain(subscription)]
        assert events == [
            (EventKind.CONFIG_APPLIED, None, None),
            (EventKind.EVICTED, "a", "budget"),
            (EventKind.CONFIG_APPLIED, None, None),
            (EventKind.UNLOADED, "b", "reload"),
        ]


async def test_shutdown_ends_open_subscriptions(write_config) -> None:
    config = write_config("server: {watch: false}\nmodels:\n  a: {loader: fake}\n")
    async with running(config) as manager:
        subscription = manager.events.subscribe()
        waiter = asyncio.create_task(subscription.next(within=30))
        manager.begin_shutdown()
        assert await asyncio.wait_for(waiter, 5) is None
        assert subscription.closed


def test_the_dashboard_files_and_a_bad_last_event_id(write_config) -> None:
    """The page ships in the package (no CDN); /events refuses an id that is not a number."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    config = write_config("server: {watch: false}\nmodels:\n  a: {loader: fake}\n")
    with TestClient(create_app(config)) as client:
        root = client.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/dashboard"
        page = client.get("/dashboard")
        assert page.headers["content-type"].startswith("text/html")
        assert '<script src="/dashboard/dashboard.js">' in page.text
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
        script = client.get("/dashboard/dashboard.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "new EventSource(" in script.text
        assert client.get("/dashboard/dashboard.css").headers["content-type"].startswith("text/css")
        response = client.get("/events", headers={"Last-Event-ID": "seven"})
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "bad_request"
