"""Shared fixtures: real config files under tmp_path, the demo models, the fake loader's state."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devkit.demo import REPO, STORE, missing_builds
from registry.config.file import load_config
from registry.config.schema import Config
from registry.loaders import fake


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _fresh_fake_state() -> Iterator[None]:
    fake.reset()
    yield
    fake.reset()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Config]:
    """Write a models.yaml under tmp_path and load it for real."""

    def write(text: str, name: str = "models.yaml") -> Config:
        path = tmp_path / name
        path.write_text(text)
        return load_config(path)

    return write


@pytest.fixture(scope="session")
def model_store() -> Path:
    """The demo models, built by the same script as the README's set-up (once)."""
    missing = missing_builds()
    if missing:
        build = [sys.executable, str(REPO / "scripts" / "build_models.py")]
        subprocess.run([*build, "--only", ",".join(missing)], check=True)
    return STORE
