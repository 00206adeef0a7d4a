"""The real process: `model-registry serve` under uvicorn, signals, exit codes, the CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import served, wait_for

from devkit.server import CLI, Process, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Process]:
    text = (
        "server: {memory_budget: 100MB, drain_timeout: 20}\n"
        "models:\n"
        "  quick: {loader: fake, hot: true, options: {size: 1MB}}\n"
        "  slow: {loader: fake, options: {size: 1MB, predict_seconds: 1.5}}\n"
    )
    with served(tmp_path, text, host=None) as process:  # the CLI's default address: loopback
        yield process


def test_sigterm_drains_in_flight_requests_and_exits_0(server: Process) -> None:
    httpx.post(f"{server.url}/models/slow/predict", json={"inputs": "warm"}, timeout=30)
    result: dict[str, httpx.Response] = {}

    def slow_request() -> None:
        result["r"] = httpx.post(
            f"{server.url}/models/slow/predict", json={"inputs": "in flight"}, timeout=30
        )

    worker = threading.Thread(target=slow_request)
    worker.start()
    wait_for(lambda: httpx.get(f"{server.url}/models/slow").json()["in_flight"] == 1, "in flight")
    server.send(signal.SIGTERM)
    worker.join(timeout=30)
    assert result["r"].status_code == 200
    assert result["r"].json()["model"] == "slow"
    with pytest.raises(httpx.TransportError):  # no new connections once draining
        httpx.get(f"{server.url}/health/live", timeout=2)
    assert server.stop() == 0
    assert "shutdown complete: drained 1 in-flight request(s), unloaded 2 model(s)" in server.log


def test_the_server_binds_loopback_by_default(server: Process) -> None:
    assert f"Uvicorn running on http://127.0.0.1:{server.port}" in server.log
    assert server.stop() == 0


def test_liveness_does_not_wait_for_torch(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  m: {loader: fake, hot: true}\n")
    code = f"""
import sys
from fastapi.testclient import TestClient
from app.main import create_app
with TestClient(create_app({str(config)!r})) as client:
    assert client.get("/health/live").status_code == 200
    assert client.post("/models/m/predict", json={{"inputs": "x"}}).status_code == 200
print("torch" in sys.modules, "transformers" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_serving_imports_only_what_a_request_needs(tmp_path: Path) -> None:
    """Starting the server (the CLI, the app, its lifespan) and answering a prediction
    imports neither numpy (the V2 and OpenAI routes' need), prometheus_client (the first
    scrape of /metrics imports it) nor httpx (the CLI's client commands' need)."""
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  m: {loader: fake, hot: true}\n")
    code = f"""
import sys
from app.cli import main
assert main(["validate", {str(config)!r}]) == 0  # builds every command's parser
from app.main import create_app
import app.http.server
before_client = "httpx" in sys.modules
from fastapi.testclient import TestClient  # httpx, for the test's own client
with TestClient(create_app({str(config)!r})) as client:
    assert client.post("/models/m/predict", json={{"inputs": "x"}}).status_code == 200
    served = sorted(m for m in ("numpy", "prometheus_client") if m in sys.modules)
    assert client.get("/metrics").status_code == 200
    print(before_client, served, "prometheus_client" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False [] True"


def test_the_core_imports_no_web_framework() -> None:
    code = """
import pkgutil, importlib, sys
import registry
for info in pkgutil.walk_packages(registry.__path__, "registry."):
    importlib.import_module(info.name)
print(sorted(m for m in ("fastapi", "starlette", "uvicorn", "httpx") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_bad_config_stops_startup_naming_file_model_and_field(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  m:\n    loader: fake\n    batch: {max_size: -1}\n")
    out = subprocess.run(
        [*CLI, "serve", "--config", str(config), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert f"invalid config {config}:" in out.stderr
    assert "model 'm', field 'batch.max_size': Input should be greater than or equal to 1" in (
        out.stderr
    )


def test_validate_reports_ok_or_the_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("server: {memory_budget: 1GiB}\nmodels:\n  m: {loader: fake, hot: true}\n")
    out = subprocess.run([*CLI, "validate", str(good)], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"{good}: ok, 1 model(s) (1 hot), budget 1.1 GB"
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m: {loader: fake, hott: true}\n")
    out = subprocess.run([*CLI, "validate", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "model 'm', field 'hott': unknown key; did you mean 'hot'?" in out.stderr


def test_sighup_reloads_models_yaml(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    with served(tmp_path, "server: {watch: false}\nmodels:\n  one: {loader: fake}\n") as process:
        config.write_text(
            "server: {watch: false}\nmodels:\n  one: {loader: fake}\n  two: {loader: fake}\n"
        )
        process.send(signal.SIGHUP)

        def names() -> list[str]:
            return [m["name"] for m in httpx.get(f"{process.url}/models").json()["models"]]

        wait_for(lambda: "two" in names(), "the reload added two")
        assert names() == ["one", "two"]
        assert "applied models.yaml: added two" in process.log
        assert process.stop() == 0
