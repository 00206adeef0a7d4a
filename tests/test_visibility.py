"""What anonymous callers and admins see, and hf: sources."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

TOKEN = "vis-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MODEL_REGISTRY_ADMIN_TOKEN", TOKEN)
    secret = tmp_path / "secret-dir"
    secret.mkdir()
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false, retry_backoff: {initial: 60}}\n"
        "models:\n"
        f"  broken: {{loader: fake, source: {secret}, options: "
        f"{{fail: 'Could not load model {secret}/x'}}}}\n"
    )
    with TestClient(create_app(path)) as test_client:
        yield test_client


def test_a_failed_models_503_names_no_server_path(client: TestClient, tmp_path: Path) -> None:
    """The public error names the model and the reason, not the absolute path."""
    first = client.post("/models/broken/predict", json={"inputs": "x"})
    again = client.post("/models/broken/predict", json={"inputs": "x"})
    for response in (first, again):
        assert response.status_code == 503, response.text
        assert str(tmp_path) not in response.text
        assert "Could not load model .../x" in response.json()["error"]["message"]
    admin = client.post("/models/broken/predict", json={"inputs": "x"}, headers=ADMIN)
    assert f"Could not load model {tmp_path}/secret-dir/x" in admin.json()["error"]["message"]


def test_get_models_shows_paths_only_to_the_admin(client: TestClient, tmp_path: Path) -> None:
    """`source`, `config_path` and paths in errors are for the admin token only."""
    client.post("/models/broken/predict", json={"inputs": "x"})
    for url in ("/models", "/models/broken", "/health/ready"):
        anonymous = client.get(url)
        assert str(tmp_path) not in anonymous.text, anonymous.text
    listing = client.get("/models").json()
    assert "config_path" not in listing and "source" not in listing["models"][0]
    assert listing["models"][0]["error"] == "RuntimeError: Could not load model .../x"
    full = client.get("/models", headers=ADMIN).json()
    assert full["config_path"] == str(tmp_path / "models.yaml")
    assert full["models"][0]["source"] == str(tmp_path / "secret-dir")
    assert str(tmp_path) in full["models"][0]["error"]


HF_SCRIPT = """
import asyncio, json, sys
from app.views_json import model_json
from registry.config.file import load_config
from registry.manager import ModelManager
from registry.payload import ImageRequest
from support import digit_png

async def main():
    manager = ModelManager(load_config(sys.argv[1]))
    await manager.start()
    try:
        prediction = await manager.predict("digits", ImageRequest(data=digit_png(1500)))
        entry = model_json(manager.describe("digits"))
        print(json.dumps({"entry": entry, "top": prediction[0]}))
    finally:
        await manager.shutdown(drain_timeout=5)

asyncio.run(main())
"""


def hf_cache(tmp_path: Path, model_store: Path) -> Path:
    """A Hugging Face cache holding the digits demo model as hf:demo/digits (main)."""
    cache = tmp_path / "hub"
    repo = cache / "models--demo--digits"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_store / "digits-resnet", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return cache


@pytest.mark.slow
def test_an_hf_source_loads_from_the_local_cache_with_a_size(
    tmp_path: Path, model_store: Path
) -> None:
    """`hf:` models load (no 'multiple values for local_files_only') and have a size."""
    env = {**os.environ, "HF_HUB_CACHE": str(hf_cache(tmp_path, model_store))}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), str(Path.cwd())])
    config = tmp_path / "models.yaml"
    config.write_text(
        "server: {watch: false}\n"
        "models:\n  digits: {task: image-classification, source: 'hf:demo/digits'}\n"
    )
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(HF_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script), str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert result["entry"]["state"] == "loaded" and result["entry"]["error"] is None
    assert result["entry"]["size_bytes"] > 50_000
    assert set(result["top"]) == {"label", "score"}
    config.write_text(
        "server: {memory_budget: 10kB}\n"
        "models:\n  digits: {task: image-classification, source: 'hf:demo/digits'}\n"
        "  other: {task: image-classification, source: 'hf:demo/absent'}\n"
    )
    checked = subprocess.run(
        [sys.executable, "-m", "app.cli", "validate", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 2
    assert "model 'digits': needs about" in checked.stderr  # the estimate from the cache
    assert "hf:demo/absent is not in the local Hugging Face cache" in checked.stderr
