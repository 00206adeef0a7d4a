"""What operators see of each device, through the real app and the real manager on simulated
GPUs: GET /models' `devices`, /metrics' per-device gauges, the device in /events' loading,
loaded and evicted events, and `model-registry ls` against a real server process."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support import running, served

from app.cli.client import Client, ls
from app.main import create_app
from devkit.server import environ
from registry.config.schema import Config
from registry.events import EventKind
from registry.payload import TextRequest

WriteConfig = Callable[[str], Config]
MB = 10**6
CONFIG = """\
server:
  memory_budget: {cpu: 100MB, cuda:0: 300MB, cuda:1: 200MB}
  simulated_devices: {cuda:0: 1GB, cuda:1: 1GB}
  watch: false
models:
  host: {loader: fake, options: {size: 10MB}}
  g0: {loader: fake, device: cuda:0, options: {size: 1MB, device_bytes: 200MB}}
  g1: {loader: fake, device: cuda, options: {size: 1MB, device_bytes: 150MB}}
  g1b: {loader: fake, device: cuda:1, options: {size: 1MB, device_bytes: 150MB}}
"""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    path = tmp_path / "models.yaml"
    path.write_text(CONFIG)
    with TestClient(create_app(path)) as test_client:
        yield test_client


def test_get_models_shows_each_devices_budget_use_and_each_models_home(
    client: TestClient,
) -> None:
    """`devices` lists the host and each GPU with its budget, used and reserved bytes and
    its models; each model says its home device and its bytes on each device."""
    for name in ("host", "g0", "g1"):
        assert client.post(f"/models/{name}/predict", json={"inputs": "x"}).status_code == 200
    body = client.get("/models").json()
    devices = {d["device"]: d for d in body["devices"]}
    assert list(devices) == ["cpu", "cuda:0", "cuda:1"]
    assert {k: (d["budget_bytes"], d["used_bytes"], d["models"]) for k, d in devices.items()} == {
        "cpu": (100 * MB, 12 * MB, 1),
        "cuda:0": (300 * MB, 200 * MB, 1),
        "cuda:1": (200 * MB, 150 * MB, 1),  # no room left on cuda:0 after g0
    }
    assert devices["cuda:1"]["kind"] == "simulated" and devices["cuda:1"]["reserved_bytes"] == 0
    models = {m["name"]: m for m in body["models"]}
    assert (models["g1"]["home_device"], models["g1"]["device_bytes"]) == (
        "cuda:1",
        {"cpu": 1 * MB, "cuda:1": 150 * MB},
    )
    assert (models["g1"]["state"], models["g1"]["device_resolved"]) == ("loaded", "cuda:1")
    assert body["used_bytes"] == devices["cpu"]["used_bytes"]  # the top level is the host's


def test_metrics_have_gauges_per_device(client: TestClient) -> None:
    """Each device's budget, used and reserved bytes and its models, labelled by device."""
    assert client.post("/models/g0/predict", json={"inputs": "x"}).status_code == 200
    text = client.get("/metrics").text
    samples = {
        (s.name, s.labels.get("device")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("model_registry_device_")
    }
    assert samples[("model_registry_device_budget_bytes", "cuda:1")] == 200 * MB
    assert samples[("model_registry_device_used_bytes", "cuda:0")] == 200 * MB
    assert samples[("model_registry_device_used_bytes", "cpu")] == 1 * MB
    assert samples[("model_registry_device_reserved_bytes", "cuda:0")] == 0
    assert samples[("model_registry_device_models", "cuda:0")] == 1
    assert samples[("model_registry_device_total_bytes", "cuda:0")] == 10**9


@pytest.mark.anyio
async def test_events_carry_the_device(write_config: WriteConfig) -> None:
    """A loading event names the device the entry asks for, a loaded event the one it went
    to, and an eviction the device it left."""
    config = write_config(
        CONFIG.replace("memory_budget: {", "capacity_wait: 1s\n  memory_budget: {")
    )
    async with running(config) as manager:
        await manager.predict("g1", TextRequest("x"))  # cuda: the most room is on cuda:0
        await manager.predict("g1b", TextRequest("x"))
        await manager.predict("g0", TextRequest("x"))
        events = [(e.kind, e.model, e.data.get("device")) for e in manager.events.recent()]
    assert (EventKind.LOADING, "g1", "cuda") in events
    assert (EventKind.LOADED, "g1", "cuda:0") in events
    assert (EventKind.LOADED, "g1b", "cuda:1") in events
    assert (EventKind.EVICTED, "g1", "cuda:0") in events  # room for g0 on cuda:0


@pytest.mark.slow
def test_ls_shows_each_gpus_budget_and_use(tmp_path: Path) -> None:
    """`model-registry ls` against a real server: each GPU's budget, use and models after the
    host's budget line, and each model's device."""
    with served(tmp_path, CONFIG, env=environ()) as process:
        client = Client(process.url)
        assert httpx.post(f"{process.url}/models/g1b/predict", json={"inputs": "x"}).is_success
        out = io.StringIO()
        try:
            assert ls(client, out) == 0
        finally:
            client.http.close()
    lines = out.getvalue().splitlines()
    g1b = next(line.split() for line in lines if line.startswith("g1b"))
    assert g1b[1:3] == ["loaded", "cuda:1"]
    assert "cuda:0 budget 300.0 MB, used 0 B (0%), reserved 0 B, 0 model(s)" in lines
    assert "cuda:1 budget 200.0 MB, used 150.0 MB (75%), reserved 0 B, 1 model(s)" in lines
