"""GET /metrics, parsed with prometheus_client's parser: the values move as requests, loads and
evictions happen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app

TOKEN = "metrics-token"
CONFIG = """\
server: {memory_budget: 100MB, watch: false, eviction: lru}
models:
  a: {loader: fake, options: {size: 60MB, load_seconds: 0.05, reject: bad}}
  b: {loader: fake, options: {size: 60MB}}
"""


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MODEL_REGISTRY_ADMIN_TOKEN", TOKEN)
    path = tmp_path / "models.yaml"
    path.write_text(CONFIG)
    with TestClient(create_app(path)) as test_client:
        yield test_client


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample, by (name, labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def predict(client: TestClient, model: str, text: str = "hello") -> int:
    return client.post(f"/models/{model}/predict", json={"inputs": text}).status_code


def test_server_gauges_and_the_standard_collectors(client: TestClient) -> None:
    samples = scrape(client)
    assert value(samples, "model_registry_budget_bytes") == 100e6
    assert value(samples, "model_registry_used_bytes") == 0
    assert value(samples, "model_registry_reserved_bytes") == 0
    assert value(samples, "model_registry_peak_used_bytes") == 0
    assert value(samples, "model_registry_inference_busy") == 0
    assert value(samples, "model_registry_inference_workers") >= 2
    assert value(samples, "model_registry_abandoned_threads") == 0
    assert value(samples, "process_resident_memory_bytes") > 10e6
    assert any(name == "python_info" for name, _ in samples)
    assert value(samples, "model_registry_model_state", model="a", state="unloaded") == 1
    assert value(samples, "model_registry_evictions_total", model="a", reason="lru") == 0


def test_requests_loads_hits_misses_and_phases_move(client: TestClient) -> None:
    assert predict(client, "a") == 200  # a miss: waits for the load
    samples = scrape(client)
    assert (
        value(samples, "model_registry_requests_total", model="a", status="2xx", error="none") == 1
    )
    assert value(samples, "model_registry_cache_misses_total", model="a") == 1
    assert value(samples, "model_registry_cache_hits_total", model="a") == 0
    assert value(samples, "model_registry_loads_total", model="a") == 1
    assert value(samples, "model_registry_load_duration_seconds_count", model="a") == 1
    assert value(samples, "model_registry_load_duration_seconds_sum", model="a") >= 0.05
    assert value(samples, "model_registry_request_duration_seconds_count", model="a") == 1
    load_wait = value(
        samples, "model_registry_request_phase_seconds_sum", model="a", phase="load_wait"
    )
    assert load_wait >= 0.05  # the fake load sleeps 50 ms
    phases = sum(
        value(samples, "model_registry_request_phase_seconds_sum", model="a", phase=phase)
        for phase in ("load_wait", "queue", "inference")
    )
    total = value(samples, "model_registry_request_duration_seconds_sum", model="a")
    assert phases == pytest.approx(total)
    inf = value(samples, "model_registry_request_duration_seconds_bucket", model="a", le="+Inf")
    assert inf == 1
    assert value(samples, "model_registry_model_measured_bytes", model="a") == 60e6
    assert value(samples, "model_registry_used_bytes") == 60e6

    assert predict(client, "a") == 200  # a hit
    assert predict(client, "a", "bad") == 422  # the fake rejects "bad"
    samples = scrape(client)
    assert value(samples, "model_registry_cache_hits_total", model="a") == 2
    assert value(samples, "model_registry_cache_misses_total", model="a") == 1
    assert (
        value(samples, "model_registry_requests_total", model="a", status="2xx", error="none") == 2
    )
    bad = value(
        samples, "model_registry_requests_total", model="a", status="4xx", error="bad_input"
    )
    assert bad == 1
    inference = value(
        samples, "model_registry_request_phase_seconds_count", model="a", phase="inference"
    )
    assert inference == 3


def test_evictions_by_reason_and_memory_figures_move(client: TestClient) -> None:
    assert predict(client, "a") == 200
    assert predict(client, "b") == 200  # evicts a: both do not fit
    samples = scrape(client)
    assert value(samples, "model_registry_evictions_total", model="a", reason="lru") == 1
    assert value(samples, "model_registry_unload_duration_seconds_count", model="a") == 1
    assert value(samples, "model_registry_model_held_bytes", model="a") == 0
    assert value(samples, "model_registry_model_held_bytes", model="b") == 60e6
    assert value(samples, "model_registry_peak_used_bytes") == 60e6
    assert value(samples, "model_registry_model_state", model="b", state="loaded") == 1

    response = client.post("/models/b/unload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    samples = scrape(client)
    assert value(samples, "model_registry_evictions_total", model="b", reason="admin") == 1
    assert value(samples, "model_registry_evictions_total", model="b", reason="lru") == 0
    assert (
        "model_registry_evictions_total",
        frozenset({("model", "b"), ("reason", "ttl")}),
    ) not in samples
    assert value(samples, "model_registry_used_bytes") == 0
    # loading a, loaded a, loading b, evicted a, loaded b, unloaded b
    assert value(samples, "model_registry_events_total") == 6


def test_a_failed_load_counts_and_its_requests_are_503(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false}\nmodels:\n  bad: {loader: fake, options: {fail: boom}}\n"
    )
    with TestClient(create_app(path)) as client:
        assert predict(client, "bad") == 503
        samples = scrape(client)
        assert value(samples, "model_registry_load_failures_total", model="bad") == 1
        failed = value(
            samples,
            "model_registry_requests_total",
            model="bad",
            status="5xx",
            error="model_failed",
        )
        assert failed == 1
        assert value(samples, "model_registry_model_state", model="bad", state="failed") == 1
