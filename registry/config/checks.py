"""The checks of models.yaml beyond its schema, which need the files: sources exist, sizes fit
the budget (each model's size as its loader estimates it), on its device too
(registry/config/devices.py)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from registry.config.devices import device_problems
from registry.config.schema import Config, ModelSpec
from registry.errors import ConfigError
from registry.hfcache import snapshot_dir
from registry.loaders import estimate_bytes
from registry.sources import Source
from registry.units import format_bytes


def check_config(config: Config) -> None:
    """Checks that need the files: sources exist, sizes fit the budget, pins fit together.

    Raise ConfigError listing every source that is missing and every size that cannot fit.
    """
    budget = config.server.memory_budget
    problems: list[str] = []
    kept_total = 0  # pinned and hot models must all fit at once
    sources: dict[str, Source | None] = {}  # resolved and present, for the device checks
    for name, spec in config.models.items():
        try:
            source = config.source_of(name)
        except ValueError as exc:
            problems.append(f"model {name!r}, field 'source': {exc}")
            continue
        missing = _missing_source(spec, source)
        if missing is not None:
            problems.append(f"model {name!r}, field 'source': {missing}")
            continue
        sources[name] = source
        try:
            estimate = estimate_bytes(spec, source)
        except ValueError as exc:
            problems.append(f"model {name!r}, field 'options': {exc}")
            continue
        if estimate is not None and estimate > budget:
            problems.append(
                f"model {name!r}: needs about {format_bytes(estimate)}, more than the whole "
                f"server.memory_budget of {format_bytes(budget)}"
            )
        if spec.pinned or spec.hot:
            kept_total += estimate or 0
    if kept_total > budget:
        problems.append(
            f"pinned and hot models need {format_bytes(kept_total)} together, more than "
            f"server.memory_budget ({format_bytes(budget)}); unpin some, make some lazy, "
            "or raise the budget"
        )
    problems += device_problems(config, sources)
    if problems:
        raise ConfigError(str(config.path), problems)


def _missing_source(spec: ModelSpec, source: Source | None) -> str | None:
    """What is wrong when the files of a source are not there (None when they are)."""
    if source is None:
        return None
    if source.repo is not None:
        try:
            snapshot_dir(source.repo, source.revision)
        except LookupError as exc:
            return str(exc)
        return None
    path = source.path
    if path is None or path.exists():
        return None
    return f"{spec.source} does not exist (looked for {path}){_did_you_mean(path)}"


def _did_you_mean(path: Path) -> str:
    """A hint for a typo in the last part of the path: a sibling with a close name."""
    try:
        siblings = os.listdir(path.parent)
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""
