"""The host-RAM tier, through the real manager on simulated GPUs: a fake model evicted from
a GPU is kept in host memory (state `offloaded`, counted on the host), comes back by a copy
instead of a load, and leaves the host by the host's own policy, an admin unload or
shutdown; with `server.host_tier: false`, or no room on the host, it is unloaded."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support import ask, running, wait_until

from app.main import create_app
from devkit.demo import REPO
from registry.config.schema import Config
from registry.errors import CapacityExceeded, UnknownModel
from registry.events import EventKind
from registry.loaders import fake
from registry.manager import ModelManager
from registry.memory.device_usage import ledger
from registry.payload import TextRequest

WriteConfig = Callable[[str], Config]
MB = 10**6


def server(host: str = "500MB", extra: str = "") -> str:
    return (
        "server:\n"
        f"  memory_budget: {{cpu: {host}, cuda:0: 300MB}}\n"
        "  simulated_devices: {cuda:0: 1GB}\n"
        "  watch: false\n  capacity_wait: 0.5s\n  isolation: thread\n"
        f"{extra}models:\n"
    )


def gpu(name: str, options: str = "offload: true") -> str:
    """A fake model holding 1 MB on the host and 200 MB on cuda:0."""
    return (
        f"  {name}:\n    loader: fake\n    device: cuda:0\n"
        f"    options: {{size: 1MB, device_bytes: 200MB, {options}}}\n"
    )


def host(name: str, size: str) -> str:
    return f"  {name}:\n    loader: fake\n    options: {{size: {size}}}\n"


def used(manager: ModelManager) -> dict[str, int]:
    """Bytes used on each device, as GET /models shows them."""
    return {d.device: d.used_bytes for d in manager.snapshot().devices}


def state(manager: ModelManager, name: str) -> str:
    return manager.describe(name).state


def within_budgets(manager: ModelManager) -> bool:
    return all(d.used_bytes <= d.budget_bytes for d in manager.snapshot().devices)


def on_gpu() -> int:
    """Bytes this process claims on the simulated cuda:0."""
    return ledger().claimed("cuda:0", os.getpid())


def kinds(manager: ModelManager, name: str) -> list[EventKind]:
    return [e.kind for e in manager.events.recent() if e.model == name]


async def offload_a(manager: ModelManager) -> None:
    """Load a, then b on the same full GPU: a is evicted from cuda:0 into host memory."""
    await manager.predict("a", TextRequest("x"))
    await manager.predict("b", TextRequest("x"))
    await wait_until(lambda: state(manager, "a") == "offloaded", "a is offloaded")


@pytest.mark.anyio
async def test_a_model_evicted_from_a_gpu_is_kept_in_host_memory_and_restored_by_a_copy(
    write_config: WriteConfig,
) -> None:
    """Evicted from cuda:0 for another model, a is offloaded: its 200 MB leave the GPU (the
    simulated claim too) and its 201 MB count on the host. A request for it restores it by
    a copy (no second load from disk), evicting b from the GPU into host memory in turn;
    no device goes over its budget at any point."""
    config = write_config(server() + gpu("a") + gpu("b"))
    async with running(config) as manager:
        await offload_a(manager)
        assert used(manager) == {"cpu": 201 * MB + 1 * MB, "cuda:0": 200 * MB}
        assert on_gpu() == 200 * MB  # only b's claim is left on the GPU
        assert manager.describe("a").holding.home == "cpu"  # type: ignore[union-attr]
        assert within_budgets(manager)
        answer = await manager.predict("a", TextRequest("x"))
        assert answer
        await wait_until(lambda: state(manager, "b") == "offloaded", "b is offloaded")
        assert state(manager, "a") == "loaded"
        assert manager.describe("a").holding.home == "cuda:0"  # type: ignore[union-attr]
        assert fake.attempts("a") == 1  # restored by the copy, not loaded again
        assert used(manager) == {"cpu": 1 * MB + 201 * MB, "cuda:0": 200 * MB}
        assert on_gpu() == 200 * MB
        assert within_budgets(manager)
        assert kinds(manager, "a") == [
            EventKind.LOADING,
            EventKind.LOADED,
            EventKind.OFFLOADED,
            EventKind.LOADING,  # from host memory (`restore: true`)
            EventKind.RESTORED,
        ]
        loading = [e for e in manager.events.recent() if e.kind is EventKind.LOADING]
        assert [e.data.get("restore", False) for e in loading if e.model == "a"] == [False, True]
        assert manager.stats.of("a").restores == 1


@pytest.mark.anyio
async def test_with_the_tier_off_a_model_evicted_from_a_gpu_is_unloaded(
    write_config: WriteConfig,
) -> None:
    """`server.host_tier: false`: a is unloaded when b needs its GPU, as before the tier,
    and its next request loads it from disk again."""
    config = write_config(server(extra="  host_tier: false\n") + gpu("a") + gpu("b"))
    async with running(config) as manager:
        await manager.predict("a", TextRequest("x"))
        await manager.predict("b", TextRequest("x"))
        await wait_until(lambda: state(manager, "a") == "unloaded", "a is unloaded")
        assert used(manager) == {"cpu": 1 * MB, "cuda:0": 200 * MB}
        await manager.predict("a", TextRequest("x"))
        assert fake.attempts("a") == 2


@pytest.mark.anyio
async def test_a_model_without_the_hooks_or_without_host_room_is_unloaded(
    write_config: WriteConfig,
) -> None:
    """A fake without `offload: true` is unloaded when evicted from its GPU; and with a host
    budget that has no free room for the 201 MB, an offloadable model is unloaded too,
    without evicting the idle host model for it."""
    config = write_config(
        server(host="300MB")
        + gpu("a")
        + gpu("b")
        + gpu("plain", "offload: false")
        + host("h", "150MB")
    )
    async with running(config) as manager:
        await manager.predict("plain", TextRequest("x"))
        await manager.predict("a", TextRequest("x"))
        await wait_until(lambda: state(manager, "plain") == "unloaded", "plain is unloaded")
        await manager.predict("h", TextRequest("x"))
        # host: h's 150 MB, a's 1 MB, b's 1 MB: a's 201 MB would take it to 351 MB of 300
        await manager.predict("b", TextRequest("x"))
        await wait_until(lambda: state(manager, "a") == "unloaded", "a is unloaded")
        assert state(manager, "h") == "loaded"
        assert used(manager) == {"cpu": 151 * MB, "cuda:0": 200 * MB}


@pytest.mark.anyio
async def test_an_offloaded_model_is_evicted_from_the_host_by_the_hosts_policy(
    write_config: WriteConfig,
) -> None:
    """The offloaded a is the least recently used model at home on the host: a host model
    that needs its room evicts it (it is unloaded, its host bytes given back)."""
    config = write_config(server(host="400MB") + gpu("a") + gpu("b") + host("h", "250MB"))
    async with running(config) as manager:
        await offload_a(manager)
        await manager.predict("h", TextRequest("x"))
        await wait_until(lambda: state(manager, "a") == "unloaded", "a is evicted from the host")
        assert used(manager) == {"cpu": 250 * MB + 1 * MB, "cuda:0": 200 * MB}
        assert kinds(manager, "a")[-1] == EventKind.EVICTED
        assert within_budgets(manager)


@pytest.mark.anyio
async def test_admin_unload_and_shutdown_close_an_offloaded_model(
    write_config: WriteConfig,
) -> None:
    """An admin unload of an offloaded model unloads it and gives back its host bytes; an
    offloaded model left at shutdown is unloaded too (its `unloaded` event says shutdown)."""
    config = write_config(server() + gpu("a") + gpu("b") + gpu("c"))
    async with running(config) as manager:
        await offload_a(manager)
        view = await manager.unload("a")
        assert view.state == "unloaded"
        assert used(manager) == {"cpu": 1 * MB, "cuda:0": 200 * MB}
        await manager.predict("c", TextRequest("x"))  # b is offloaded
        await wait_until(lambda: state(manager, "b") == "offloaded", "b is offloaded")
    events = [(e.kind, e.model, e.data.get("reason")) for e in manager.events.recent()]
    assert (EventKind.UNLOADED, "a", "admin") in events
    assert (EventKind.UNLOADED, "b", "shutdown") in events
    assert on_gpu() == 0


@pytest.mark.anyio
async def test_an_offloaded_model_stays_offloaded_when_no_gpu_has_room_for_its_restore(
    write_config: WriteConfig,
) -> None:
    """With the GPU held by a pinned model, a request for the offloaded a gets the 503
    `capacity` naming cuda:0 after capacity_wait; a stays offloaded, its bytes on the host,
    and a later admin unload still closes it."""
    pinned = "  b:\n    loader: fake\n    device: cuda:0\n    pinned: true\n"
    pinned += "    options: {size: 1MB, device_bytes: 200MB}\n"
    config = write_config(server() + gpu("a") + pinned)
    async with running(config) as manager:
        await offload_a(manager)
        with pytest.raises(CapacityExceeded) as refused:
            await manager.predict("a", TextRequest("x"))
        assert refused.value.device == "cuda:0"
        assert state(manager, "a") == "offloaded"
        assert used(manager) == {"cpu": 201 * MB + 1 * MB, "cuda:0": 200 * MB}
        assert (await manager.unload("a")).state == "unloaded"
        assert used(manager) == {"cpu": 1 * MB, "cuda:0": 200 * MB}
        assert on_gpu() == 200 * MB


@pytest.mark.anyio
async def test_an_offloaded_model_is_unloaded_by_its_ttl_and_by_a_reload_that_removes_it(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    """An offloaded model past its idle_ttl is unloaded from the host; one removed from
    models.yaml by a reload is unloaded too (both give back their host bytes)."""
    ttl = "  t:\n    loader: fake\n    device: cuda:0\n    idle_ttl: 0.3s\n"
    ttl += "    options: {size: 1MB, device_bytes: 200MB, offload: true}\n"
    config = write_config(server() + gpu("a") + gpu("b") + ttl)
    async with running(config) as manager:
        await manager.predict("t", TextRequest("x"))
        await offload_a(manager)  # t is offloaded for a, then a for b
        await wait_until(lambda: state(manager, "t") == "unloaded", "t's TTL unloads it")
        assert [e.kind for e in manager.events.recent() if e.model == "t"][-1] is (
            EventKind.UNLOADED
        )
        assert state(manager, "a") == "offloaded"
        (tmp_path / "models.yaml").write_text(server() + gpu("b") + ttl)
        await manager.reload()
        await wait_until(lambda: used(manager)["cpu"] == 1 * MB, "a's host bytes are released")
        removed = [e for e in manager.events.recent() if e.model == "a"][-1]
        assert (removed.kind, removed.data.get("reason")) == (EventKind.UNLOADED, "reload")
        assert on_gpu() == 200 * MB


def test_get_models_and_metrics_show_an_offloaded_model(tmp_path: Path) -> None:
    """Through the real app: GET /models shows the offloaded model at home on the host with
    all its bytes there, /metrics its state and its offload; after a request restores it,
    its restore is counted."""
    path = tmp_path / "models.yaml"
    path.write_text(server() + gpu("a") + gpu("b"))
    with TestClient(create_app(path)) as client:
        for name in ("a", "b"):
            assert client.post(f"/models/{name}/predict", json={"inputs": "x"}).status_code == 200
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["a"]["state"] == "offloaded"
        assert (models["a"]["home_device"], models["a"]["device_bytes"]) == (
            "cpu",
            {"cpu": 201 * MB},
        )
        assert metric(client, "model_registry_model_state", model="a", state="offloaded") == 1
        assert metric(client, "model_registry_offloads_total", model="a") == 1
        assert client.post("/models/a/predict", json={"inputs": "x"}).status_code == 200
        assert metric(client, "model_registry_restores_total", model="a") == 1
        assert metric(client, "model_registry_offloads_total", model="b") == 1


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


# Run in a child process: importing transformers here would leave this process's garbage
# collections (which every fake load runs) walking its objects for the tests that follow.
HOOKS_CHECK = """
import sys
from pathlib import Path
from registry.config.file import load_config
from registry.loaders import LoadContext, load_model
from registry.loaders.interface import can_offload, device_of
from registry.sources import resolve_source

config = load_config(Path(sys.argv[1]))
spec = config.models["m"]
source = resolve_source(spec.source, config.base_dir)
model = load_model(LoadContext("m", spec, source, config.base_dir))
assert can_offload(model), "no offload/restore hooks"
before = model.predict([sys.argv[2]], {})
model.offload()
assert device_of(model) == "cpu", device_of(model)
model.restore("cpu")
assert device_of(model) == "cpu", device_of(model)
after = model.predict([sys.argv[2]], {})
assert after == before, (before, after)
model.close()
print("hooks ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("folder", "task", "text"),
    [
        ("langid-bert", "text-classification", "Der schnelle braune Fuchs springt."),
        ("bert-memory-demo", "sentence-embeddings", "a test sentence"),
    ],
)
def test_the_real_loaders_hooks_move_the_weights_and_keep_the_answers(
    model_store: Path, tmp_path: Path, folder: str, task: str, text: str
) -> None:
    """The pipeline and sentence-embeddings models' offload() and restore(device) move their
    torch module with `.to()` and the answers stay the same. On this machine both ends of
    the move are the CPU, so this checks that the hooks keep the model usable (the pipeline
    follows its module's device), not the speed of a copy (scripts/gpu_check.sh does)."""
    config = tmp_path / "models.yaml"
    config.write_text(
        "server: {watch: false}\nmodels:\n"
        f"  m: {{task: {task}, source: {model_store / folder}}}\n"
    )
    argv = [sys.executable, "-c", HOOKS_CHECK, str(config), text]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("hooks ok")


@pytest.mark.anyio
async def test_concurrent_requests_for_an_offloaded_model_make_one_restore(
    write_config: WriteConfig,
) -> None:
    """Requests that arrive while a is being copied to the host, and more after, all get
    their answer from one restore (single flight); no load from disk, no device over its
    budget, and b (idle by then) goes to the host in its turn."""
    slow = "offload: true, offload_seconds: 0.3, restore_seconds: 0.2"
    config = write_config(server() + gpu("a", slow) + gpu("b", slow))
    async with running(config) as manager:
        await manager.predict("a", TextRequest("x"))
        b = ask(manager, "b")  # waits for a's GPU bytes, released once a's copy ends
        await wait_until(lambda: state(manager, "a") == "offloading", "a is being offloaded")
        early = [ask(manager, "a", f"early {i}") for i in range(8)]
        await wait_until(lambda: state(manager, "a") != "offloading", "a's copy ended")
        late = [ask(manager, "a", f"late {i}") for i in range(8)]
        answers = await asyncio.gather(b, *early, *late)
        assert len(answers) == 17 and all(answers)
        assert manager.stats.of("a").restores == 1
        assert fake.attempts("a") == 1
        await wait_until(lambda: state(manager, "b") == "offloaded", "b is offloaded")
        assert within_budgets(manager)
        assert used(manager) == {"cpu": 1 * MB + 201 * MB, "cuda:0": 200 * MB}


@pytest.mark.anyio
async def test_an_admin_unload_during_the_copy_to_the_host_unloads_the_model(
    write_config: WriteConfig,
) -> None:
    """An admin unload that arrives while a is being copied to the host waits for the copy,
    then unloads a: nothing of it is left on any device."""
    slow = "offload: true, offload_seconds: 0.3"
    config = write_config(server() + gpu("a", slow) + gpu("b"))
    async with running(config) as manager:
        await manager.predict("a", TextRequest("x"))
        b = ask(manager, "b")  # waits for a's GPU bytes, released once a's copy ends
        await wait_until(lambda: state(manager, "a") == "offloading", "a is being offloaded")
        view = await manager.unload("a")
        assert view.state == "unloaded"
        assert await b
        assert used(manager) == {"cpu": 1 * MB, "cuda:0": 200 * MB}
        assert on_gpu() == 200 * MB


@pytest.mark.anyio
async def test_a_restore_stopped_by_a_reload_keeps_its_bytes_until_the_copy_ends(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    """A reload that removes a while it is being copied back to the GPU stops the restore:
    a's GPU reservation stays until the copy's thread ends, which then closes the model
    (its claim on the GPU is given back) and releases its bytes."""
    slow = "offload: true, restore_seconds: 0.5"
    config = write_config(server() + gpu("a", slow) + gpu("b"))
    async with running(config) as manager:
        await offload_a(manager)
        request = ask(manager, "a")
        await wait_until(lambda: fake_restoring(manager), "a's copy back has started")
        (tmp_path / "models.yaml").write_text(server() + gpu("b"))
        await manager.reload()
        with pytest.raises(UnknownModel):  # removed under it
            await request
        assert used(manager)["cuda:0"] == 200 * MB  # a's, kept while its copy runs
        await wait_until(lambda: used(manager)["cuda:0"] == 0, "a's bytes are released")
        await wait_until(lambda: on_gpu() == 0, "a's claim is given back")
        assert within_budgets(manager)


def fake_restoring(manager: ModelManager) -> bool:
    """Whether a's restore holds its GPU room (b evicted, a loading on cuda:0)."""
    view = manager.describe("a")
    return view.state == "loading" and view.holding.home == "cuda:0"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_shutdown_during_the_copy_to_the_host_unloads_the_model(
    write_config: WriteConfig,
) -> None:
    """A shutdown that begins while a is being copied to the host waits for the copy, then
    unloads a: its `unloaded` event says shutdown, and nothing is left on the GPU."""
    slow = "offload: true, offload_seconds: 0.5"
    config = write_config(server() + gpu("a", slow) + gpu("b"))
    async with running(config) as manager:
        await manager.predict("a", TextRequest("x"))
        b = ask(manager, "b")
        await wait_until(lambda: state(manager, "a") == "offloading", "a is being offloaded")
    await asyncio.gather(b, return_exceptions=True)
    events = [(e.kind, e.model, e.data.get("reason")) for e in manager.events.recent()]
    assert (EventKind.UNLOADED, "a", "shutdown") in events
    assert state(manager, "a") == "unloaded"
    assert on_gpu() == 0


@pytest.mark.anyio
async def test_a_restore_keeps_its_host_bytes_until_the_copy_back_ends(
    write_config: WriteConfig,
) -> None:
    """While a is copied back to cuda:0 its weights are still in host memory: the host
    budget keeps counting them until the copy ends, so no host load can take that room."""
    slow = "offload: true, restore_seconds: 1.0"
    config = write_config(server() + gpu("a", slow) + gpu("b", "offload: false"))
    async with running(config) as manager:
        await offload_a(manager)
        back = ask(manager, "a")  # b, which cannot be offloaded, is unloaded for it
        await wait_until(lambda: state(manager, "a") == "loading", "a's restore runs")
        await wait_until(lambda: state(manager, "b") == "unloaded", "b is unloaded")
        assert used(manager)["cpu"] == 201 * MB  # a's weights, still on the host
        await back
        assert within_budgets(manager)


@pytest.mark.anyio
async def test_a_restore_is_bounded_by_load_timeout(write_config: WriteConfig) -> None:
    """A copy back that hangs ends at the model's load_timeout like a load from disk: the
    request gets an error instead of waiting for ever, and the model is not held."""
    stuck = "offload: true, restore_seconds: 30"
    config = write_config(
        server()
        + gpu("a", stuck).replace("device: cuda:0\n", "device: cuda:0\n    load_timeout: 1s\n")
        + gpu("b")
    )
    async with running(config) as manager:
        await offload_a(manager)
        with pytest.raises(Exception, match="timed out after 1s"):
            await asyncio.wait_for(manager.predict("a", TextRequest("x")), 20)
        assert state(manager, "a") in ("failed", "unloaded")
