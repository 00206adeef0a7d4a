"""The views' JSON contract: the keys of GET /models (and their order) and their formatting.

The core returns typed views (registry/views.py); app/views_json.py is the one place that
turns them into JSON. Clients, the dashboard and the Ray gateway read these keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import wait_for

from app.main import create_app
from app.views_json import model_json, readiness_json, registry_json
from registry.admission import check_input_kind
from registry.config.file import load_config
from registry.config.schema import BatchSpec, ModelSpec
from registry.errors import UnsupportedInput
from registry.slot import Slot, State
from registry.views import (
    AbandonedView,
    BatchStats,
    BudgetState,
    ConfigRefusal,
    Holding,
    ModelView,
    Readiness,
    RegistryView,
    WorkerView,
    model_view,
)

TOKEN = "views-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SERVER_KEYS = [
    "budget_bytes",
    "used_bytes",
    "reserved_bytes",
    "peak_used_bytes",
    "budget_state",
    "abandoned_threads",
    "abandoned",
    "unused_loads",
    "config_path",
    "config_loaded_at",
    "config_error",
    "eviction",
    "models",
    "last_event_id",
    "spare_worker",
    "devices",
]
DEVICE_KEYS = [
    "device",
    "kind",
    "total_bytes",
    "budget_bytes",
    "overhead_bytes",
    "used_bytes",
    "reserved_bytes",
    "models",
]
SLOT_KEYS = [
    "name",
    "task",
    "state",
    "hot",
    "pinned",
    "size_bytes",
    "size_measured",
    "in_flight",
    "queued",
    "load_count",
    "served",
    "abandoned_threads",
    "last_used",
    "load_seconds",
    "error",
    "input",
    "source",
    "batch",
    "batches",
    "idle_ttl",
    "description",
    "isolation",
    "device",
    "device_resolved",
    "recycles",
    "worker_deaths",
]
WORKER_KEYS = [
    "worker_pid",
    "param_bytes",
    "worker_private_bytes",
    "worker_uss_bytes",
    "worker_pss_bytes",
]
HOLDING_KEYS = [
    "eviction",
    "eviction_priority",
    "held_bytes",
    "ttl_left_seconds",
    "home_device",
    "device_bytes",
]
MODEL_KEYS = SLOT_KEYS + HOLDING_KEYS
HIDDEN = {"source", "config_path"}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MODEL_REGISTRY_ADMIN_TOKEN", TOKEN)
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false, memory_budget: 100MB, retry_backoff: {initial: 60}}\n"
        "models:\n"
        "  a: {loader: fake, hot: true, options: {size: 10MB}, batch: {max_size: 4}}\n"
        "  b: {loader: fake, hot: true, options: {fail: boom}}\n"
    )
    with TestClient(create_app(path)) as test_client:
        yield test_client


def test_get_models_keys_are_pinned_for_the_server_and_each_model(client: TestClient) -> None:
    """The keys and their order; anonymous callers get the same without the paths."""
    assert client.post("/models/a/predict", json={"inputs": "x"}).status_code == 200
    admin = client.get("/models", headers=ADMIN).json()
    assert list(admin) == SERVER_KEYS
    assert [list(entry) for entry in admin["models"]] == [MODEL_KEYS, MODEL_KEYS]
    assert [list(device) for device in admin["devices"]] == [DEVICE_KEYS]
    host = admin["devices"][0]
    assert (host["device"], host["kind"], host["budget_bytes"]) == ("cpu", "host", 100 * 10**6)
    assert host["used_bytes"] == admin["used_bytes"] == 10 * 10**6
    assert (admin["models"][0]["home_device"], admin["models"][0]["device_bytes"]) == (
        "cpu",
        {"cpu": 10 * 10**6},
    )
    anonymous = client.get("/models").json()
    assert list(anonymous) == [k for k in SERVER_KEYS if k not in HIDDEN]
    assert list(anonymous["models"][0]) == [k for k in MODEL_KEYS if k not in HIDDEN]
    one = client.get("/models/a", headers=ADMIN).json()
    assert list(one) == MODEL_KEYS
    assert (one["state"], one["batches"], one["batch"]) == (
        "loaded",
        {"batches": 1, "inputs": 1},
        {"max_size": 4, "max_wait_ms": 5.0},
    )
    assert admin["budget_state"] == "ok" and admin["eviction"] == "cost"


def test_readiness_words_and_statuses_are_the_apps(client: TestClient) -> None:
    """The core says what is pending or failed; the app says 503 and 'starting'."""
    wait_for(lambda: client.get("/models/a").json()["state"] == "loaded", "a has loaded")
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json() == {
        "status": "starting",
        "pending": [],
        "failed": {"b": "RuntimeError: boom"},
    }
    assert readiness_json(Readiness(closing=False, pending=(), failed={}))["status"] == "ready"
    closing = Readiness(closing=True, pending=("x",), failed={})
    assert not closing.ready
    assert readiness_json(closing) == {"status": "shutting down", "pending": ["x"], "failed": {}}


def test_the_json_rounds_and_formats_what_the_views_hold() -> None:
    """Views hold raw values (datetimes, unrounded seconds); the JSON rounds and formats."""
    moment = datetime(2026, 11, 24, 8, 30, 15, 123456, tzinfo=UTC)
    model = ModelView(
        name="p",
        task="loader:fake",
        state=State.LOADED,
        hot=False,
        pinned=True,
        size_bytes=3_000_000,
        size_measured=True,
        in_flight=1,
        queued=2,
        load_count=3,
        served=4,
        abandoned_threads=0,
        last_used=moment,
        load_seconds=0.123456,
        error=None,
        input="json",
        source="/srv/models/p",
        batch=BatchSpec(max_size=8),
        batches=BatchStats(batches=5, inputs=9),
        idle_ttl=30.0,
        description="a process model",
        isolation="process",
        device="auto",
        device_resolved="cuda:0",
        recycles=1,
        worker_deaths=0,
        worker=WorkerView(
            pid=42, param_bytes=2_000_000, private_bytes=3_000_000, uss_bytes=None, pss_bytes=7
        ),
        holding=Holding(
            eviction="lru",
            eviction_priority=0.12345678,
            held_bytes=3_000_000,
            ttl_left_seconds=9.87,
        ),
    )
    body = model_json(model)
    assert list(body) == SLOT_KEYS + WORKER_KEYS + HOLDING_KEYS
    assert body["last_used"] == "2026-11-24T08:30:15.123+00:00"
    assert (body["load_seconds"], body["eviction_priority"], body["ttl_left_seconds"]) == (
        0.1235,
        0.123457,
        9.9,
    )
    assert (body["state"], body["isolation"], body["worker_pid"], body["worker_pss_bytes"]) == (
        "loaded",
        "process",
        42,
        7,
    )
    assert body["batches"] == {"batches": 5, "inputs": 9}
    assert (body["device"], body["device_resolved"]) == ("auto", "cuda:0")
    view = RegistryView(
        budget_bytes=10,
        used_bytes=11,
        reserved_bytes=0,
        peak_used_bytes=11,
        abandoned=(AbandonedView("p", "load", "timed out", moment, retired=True),),
        unused_loads=0,
        config_path=Path("/srv/models.yaml"),
        config_loaded_at=moment,
        config_error=ConfigRefusal("invalid", ("model 'x': bad",), moment),
        eviction="lru",
        models=(model,),
        last_event_id=12,
    )
    server = registry_json(view)
    assert list(server) == SERVER_KEYS
    assert view.budget_state is BudgetState.RESTORING  # used above the (lowered) budget
    assert server["budget_state"] == "restoring" and server["abandoned_threads"] == 1
    assert server["abandoned"] == [
        {
            "model": "p",
            "kind": "load",
            "why": "timed out",
            "since": "2026-11-24T08:30:15.123+00:00",
            "retired": True,
        }
    ]
    assert server["config_loaded_at"] == "2026-11-24T08:30:15+00:00"
    assert server["config_error"] == {
        "message": "invalid",
        "problems": ["model 'x': bad"],
        "at": "2026-11-24T08:30:15+00:00",
    }
    assert server["config_path"] == "/srv/models.yaml"


def test_a_slot_outside_a_manager_has_no_budget_keys(tmp_path: Path) -> None:
    """The Ray gateway's blank entries: a model no replica has touched."""
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  m: {loader: fake, isolation: process}\n")
    spec = load_config(path).models["m"]
    body = model_json(model_view(Slot(name="m", spec=spec, source=None)))
    assert list(body) == SLOT_KEYS
    assert (body["state"], body["isolation"], body["size_bytes"]) == ("unloaded", "process", None)
    assert (body["device"], body["device_resolved"]) == ("cpu", None)  # no load: not known yet


def test_get_models_shows_the_device_asked_for_and_the_one_each_load_ran_on(
    tmp_path: Path, model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each entry's `device` is the one models.yaml asks for, and `device_resolved` the one its
    load ran on: `auto` resolves to the GPU where there is one, else the CPU, in the server's
    process and in a worker; a custom torch module reports its tensors' device; the fake holds
    plain bytes in RAM whatever its entry says; before a load nothing is claimed."""
    import torch

    here = "cuda:0" if torch.cuda.is_available() else "cpu"
    monkeypatch.setenv("MODEL_REGISTRY_ADMIN_TOKEN", TOKEN)
    langid = f"task: text-classification, source: {model_store}/langid-bert, device: auto"
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false, memory_budget: 1GB}\n"
        "models:\n"
        f"  auto-thread: {{{langid}, isolation: thread}}\n"
        f"  auto-process: {{{langid}, isolation: process}}\n"
        "  iris:\n"
        "    loader: registry.demo.iris:load\n"
        f"    source: {model_store}/iris-mlp\n"
        "    input: json\n"
        "    isolation: thread\n"
        "  fake-cuda: {loader: fake, device: cuda}\n"
        "  never: {loader: fake, device: auto}\n"
    )
    with TestClient(create_app(path)) as client:
        for name in ("auto-thread", "auto-process", "iris", "fake-cuda"):
            response = client.post(f"/models/{name}/load", headers=ADMIN)
            assert response.status_code == 200, response.text
        listing = {m["name"]: m for m in client.get("/models").json()["models"]}
        shown = {
            name: (m["isolation"], m["device"], m["device_resolved"]) for name, m in listing.items()
        }
        assert shown == {
            "auto-process": ("process", "auto", here),
            "auto-thread": ("thread", "auto", here),
            "fake-cuda": ("thread", "cuda", "cpu"),
            "iris": ("thread", "cpu", "cpu"),
            "never": (None, "auto", None),
        }
        # an unload keeps where the last load ran, as `isolation` does
        assert client.post("/models/auto-thread/unload", headers=ADMIN).status_code == 200
        one = client.get("/models/auto-thread").json()
        assert (one["state"], one["device_resolved"]) == ("unloaded", here)


@pytest.mark.parametrize(
    ("spec", "upload", "sent", "message"),
    [
        (
            ModelSpec(task="text-classification", source="x"),
            True,
            None,
            "model 'm' (text-classification) takes text: POST application/json "
            '{"inputs": ...}, not a file upload',
        ),
        (
            ModelSpec(loader="fake"),
            True,
            "multipart/form-data",
            "model 'm' (custom loader) takes JSON: POST application/json "
            '{"inputs": ...}, not a file upload',
        ),
        (
            ModelSpec(task="image-classification", source="x"),
            False,
            "application/json",
            "model 'm' (image-classification) takes an image: send multipart/form-data with the "
            "file in field 'file' (e.g. curl -F file=@digit.png), not application/json",
        ),
        (
            ModelSpec(loader="fake", input="image"),
            False,
            None,
            "model 'm' (custom loader) takes an image: POST multipart/form-data with the image "
            "file in field 'file'",
        ),
    ],
)
def test_the_one_input_kind_rule(
    spec: ModelSpec, upload: bool, sent: str | None, message: str
) -> None:
    """Routes and the core ask the same function; HTTP callers are told how to send an upload."""
    with pytest.raises(UnsupportedInput) as caught:
        check_input_kind("m", spec, upload=upload, sent=sent)
    assert caught.value.message == message
    check_input_kind("m", spec, upload=not upload)  # the other kind is what it takes
