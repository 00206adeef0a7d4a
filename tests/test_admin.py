"""Admin endpoints over HTTP: the token rules, load/unload/reload, and their errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

TOKEN = "s3cret-token"
CONFIG = """\
server: {memory_budget: 100MB, watch: false, capacity_wait: 0.2}
models:
  a: {loader: fake, options: {size: 60MB}}
  b: {loader: fake, pinned: true, options: {size: 30MB}}
  c: {loader: fake, options: {size: 60MB}}
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def client(config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MODEL_REGISTRY_ADMIN_TOKEN", TOKEN)
    with TestClient(create_app(config_path)) as test_client:
        yield test_client


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_admin_is_disabled_without_a_configured_token(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODEL_REGISTRY_ADMIN_TOKEN", raising=False)
    with TestClient(create_app(config_path)) as client:
        response = client.post("/models/a/load", headers=auth())
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["type"] == "admin_disabled"
        assert "with the MODEL_REGISTRY_ADMIN_TOKEN environment variable set" in error["message"]
        assert client.post("/models/a/predict", json={"inputs": "x"}).status_code == 200


@pytest.mark.parametrize("headers", [{}, auth("wrong"), {"Authorization": TOKEN}])
def test_a_missing_or_wrong_token_is_401(client: TestClient, headers) -> None:
    for path in ("/models/a/load", "/models/a/unload", "/admin/reload"):
        response = client.post(path, headers=headers)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "unauthorized"
    assert client.get("/models/a").json()["state"] == "unloaded"


def test_a_token_from_the_config_file_works_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODEL_REGISTRY_ADMIN_TOKEN", raising=False)
    path = tmp_path / "models.yaml"
    path.write_text(CONFIG.replace("watch: false,", "watch: false, admin_token: from-file,"))
    with TestClient(create_app(path)) as client:
        assert client.post("/models/a/load", headers=auth("from-file")).status_code == 200
        assert client.post("/models/a/load", headers=auth(TOKEN)).status_code == 401


def test_load_and_unload_with_the_token(client: TestClient) -> None:
    loaded = client.post("/models/a/load", headers=auth())
    assert loaded.status_code == 200
    assert loaded.json()["state"] == "loaded" and loaded.json()["load_count"] == 1
    unloaded = client.post("/models/a/unload", headers=auth())
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
    assert client.get("/models").json()["used_bytes"] == 0


def test_unload_of_an_unknown_model_is_404(client: TestClient) -> None:
    response = client.post("/models/nope/unload", headers=auth())
    assert response.status_code == 404
    assert response.json()["error"]["known"] == ["a", "b", "c"]


def test_admin_load_evicts_idle_models_but_never_pinned_ones(client: TestClient) -> None:
    assert client.post("/models/b/load", headers=auth()).status_code == 200
    assert client.post("/models/a/predict", json={"inputs": "x"}).status_code == 200
    # a (60 MB, idle) can be evicted for c; b (pinned) cannot: c fits only without a.
    assert client.post("/models/c/load", headers=auth()).status_code == 200
    response = client.post("/models/a/load", headers=auth())  # c idle: evicted for a
    assert response.status_code == 200
    states = {m["name"]: m["state"] for m in client.get("/models").json()["models"]}
    assert states == {"a": "loaded", "b": "loaded", "c": "unloaded"}


def test_a_load_that_cannot_fit_even_after_evicting_everything_is_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_REGISTRY_ADMIN_TOKEN", TOKEN)
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {memory_budget: 100MB, watch: false, capacity_wait: 0.2}\n"
        "models:\n"
        "  pin: {loader: fake, pinned: true, options: {size: 70MB}}\n"
        "  big: {loader: fake, options: {size: 60MB}}\n"
    )
    with TestClient(create_app(path)) as client:
        client.post("/models/pin/load", headers=auth())
        response = client.post("/models/big/load", headers=auth())
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["message"] == (
            "model 'big' needs 60.0 MB but only 30.0 MB of the 100.0 MB budget is free and "
            "every other model is in use or pinned"
        )
        assert client.post("/models/pin/predict", json={"inputs": "x"}).status_code == 200


def test_reload_applies_an_edit_and_refuses_an_invalid_one(
    client: TestClient, config_path: Path
) -> None:
    config_path.write_text(CONFIG + "  d: {loader: fake}\n")
    response = client.post("/admin/reload", headers=auth())
    assert response.status_code == 200
    assert response.json()["added"] == ["d"]
    assert client.post("/models/d/predict", json={"inputs": "x"}).status_code == 200

    config_path.write_text(CONFIG + "  d: {loader: fake, batch: {max_size: 0}}\n")
    response = client.post("/admin/reload", headers=auth())
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "config_error"
    assert error["problems"] == [
        "model 'd', field 'batch.max_size': Input should be greater than or equal to 1"
    ]
    listing = client.get("/models").json()
    assert listing["config_error"]["problems"] == error["problems"]
    assert [m["name"] for m in listing["models"]] == ["a", "b", "c", "d"]
    assert client.get("/health/ready").status_code == 200


def test_a_full_queue_is_503_saying_loading_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false}\n"
        "models:\n  slow: {loader: fake, max_queue: 1, options: {load_seconds: 1.0}}\n"
    )
    with TestClient(create_app(path)) as client:
        first: dict[str, int] = {}
        worker = threading.Thread(
            target=lambda: first.update(
                code=client.post("/models/slow/predict", json={"inputs": "x"}).status_code
            )
        )
        worker.start()
        while client.get("/models/slow").json()["queued"] < 1:
            pass
        response = client.post("/models/slow/predict", json={"inputs": "y"})
        worker.join()
        assert first["code"] == 200
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["type"] == "loading"
