"""Config edges a careless edit produces: deep nesting, a typo in a source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import problems_of, running, wait_until

from app.main import create_app
from registry.config.file import load_config
from registry.config.yaml_text import MAX_DEPTH
from registry.errors import ConfigError
from registry.views import ConfigRefusal

TOKEN = "edge-secret"
NESTED = "models:\n  a:\n    loader: fake\n    options: {x: " + "[" * 5000 + "]" * 5000 + "}\n"


def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path) -> None:
    """5,000 nested lists are a config error naming the place, not a RecursionError."""
    problems = problems_of(tmp_path, NESTED)
    assert problems == [
        f"YAML syntax, line 4, column {14 + MAX_DEPTH}: lists or mappings nest deeper than "
        f"{MAX_DEPTH} levels; flatten the data"
    ]


def test_validate_prints_the_nesting_error_without_a_traceback(tmp_path: Path) -> None:
    """`model-registry validate` on a deeply nested file: one problem line, exit 2."""
    path = tmp_path / "models.yaml"
    path.write_text(NESTED)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"nest deeper than {MAX_DEPTH} levels" in done.stderr
    assert done.stderr.startswith(f"model-registry: invalid config {path}:")


def test_reload_of_a_deeply_nested_file_is_422_and_keeps_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /admin/reload answers 422 like any config error; the old models serve."""
    monkeypatch.setenv("MODEL_REGISTRY_ADMIN_TOKEN", TOKEN)
    path = tmp_path / "models.yaml"
    path.write_text("server: {watch: false}\nmodels:\n  a: {loader: fake, options: {size: 1kB}}\n")
    with TestClient(create_app(path)) as client:
        path.write_text(NESTED)
        response = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["type"] == "config_error"
        assert client.post("/models/a/predict", json={"inputs": "x"}).status_code == 200


@pytest.mark.anyio
async def test_the_watcher_reports_a_deeply_nested_edit_as_config_error(tmp_path: Path) -> None:
    """The file watcher sets config_error (it used to swallow the RecursionError)."""
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch_interval: 0.05}\nmodels:\n  a: {loader: fake, options: {size: 1kB}}\n"
    )
    async with running(load_config(path)) as manager:
        path.write_text(NESTED)
        await wait_until(lambda: manager.config_error is not None, "the edit is reported")
        assert error_text(manager.config_error).count("nest deeper") == 1
        assert manager.names() == ["a"]


def error_text(error: object) -> str:
    assert isinstance(error, ConfigRefusal)
    return str(error.problems)


def test_a_missing_local_source_is_a_config_error_with_a_hint(tmp_path: Path) -> None:
    """A typo in `source:` is refused by validation, with the close name as a hint."""
    (tmp_path / "store" / "langid-bert").mkdir(parents=True)
    text = "models:\n  langid:\n    task: text-classification\n    source: ./store/langid-bret\n"
    assert problems_of(tmp_path, text) == [
        f"model 'langid', field 'source': ./store/langid-bret does not exist (looked for "
        f"{tmp_path}/store/langid-bret); did you mean 'langid-bert'?"
    ]


def test_a_reload_with_a_missing_source_keeps_the_old_model_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bad edit is refused (422) and the model keeps answering."""
    monkeypatch.setenv("MODEL_REGISTRY_ADMIN_TOKEN", TOKEN)
    store = tmp_path / "store"
    store.mkdir()
    path = tmp_path / "models.yaml"
    model = "  a: {{loader: fake, source: {}, options: {{size: 1kB}}}}\n"
    path.write_text("server: {watch: false}\nmodels:\n" + model.format("./store"))
    with TestClient(create_app(path)) as client:
        assert client.post("/models/a/predict", json={"inputs": "x"}).status_code == 200
        path.write_text("server: {watch: false}\nmodels:\n" + model.format("./stroe"))
        response = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 422, response.text
        assert "./stroe does not exist" in response.json()["error"]["problems"][0]
        again = client.post("/models/a/predict", json={"inputs": "x"})
        assert again.status_code == 200, again.text
    with pytest.raises(ConfigError):
        load_config(path)
