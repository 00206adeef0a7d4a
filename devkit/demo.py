"""The demo models: their entries in the repository's models.yaml, their builders.

models.yaml is the one list of the demo models; the tests and the benchmarks read it here
(with `./` sources made absolute) instead of keeping copies.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
STORE = REPO / "model-store"
# What a model is, as opposed to how a server serves it (hot, batch, idle_ttl, description).
MODEL_KEYS = ("task", "loader", "source", "input")


@functools.cache
def _entries() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load((REPO / "models.yaml").read_text())
    entries: dict[str, dict[str, Any]] = document["models"]
    for entry in entries.values():
        if entry["source"].startswith("./"):
            entry["source"] = str(REPO / entry["source"])
    return entries


def registry_entries() -> dict[str, dict[str, Any]]:
    """The default models.yaml's entries, as served (hot, batch, ...), absolute sources."""
    return {name: dict(entry) for name, entry in _entries().items()}


def models() -> dict[str, dict[str, Any]]:
    """Each demo model's entry without its serving settings (task, loader, source, input)."""
    return {
        name: {k: v for k, v in entry.items() if k in MODEL_KEYS}
        for name, entry in _entries().items()
    }


def builds() -> tuple[str, ...]:
    """The names under model-store/ that scripts/build_models.py builds (what models.yaml uses)."""
    sources = (Path(entry["source"]) for entry in _entries().values())
    return tuple(source.name for source in sources if source.parent == STORE)


def missing_builds() -> list[str]:
    """The demo models not built yet (no BUILD.json)."""
    return [name for name in builds() if not (STORE / name / "BUILD.json").exists()]


@functools.cache
def builders() -> ModuleType:
    """scripts/build_models.py, for its data helpers (digit_image, langid_sentence, ...)."""
    spec = importlib.util.spec_from_file_location("build_models", REPO / "scripts/build_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_models"] = module
    spec.loader.exec_module(module)
    return module
