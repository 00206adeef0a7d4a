"""What a models.yaml edit changes, as a plan the manager applies."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from registry.config.schema import Config

# Server settings that are read once at start; a change needs a restart.
RESTART_SETTINGS = (
    "host",
    "port",
    "inference_workers",
    "torch_threads",
    "watch",
    "max_header_size",
    "max_headers",
    "eviction",
    "simulated_devices",  # the devices are discovered once, at start
)


@dataclass
class Changes:
    """Model names by what happens to them; `restart_needed` lists ignored server settings."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # source/loader/options changed
    updated: list[str] = field(default_factory=list)  # hot, pinned, TTL, batch... in place
    unchanged: list[str] = field(default_factory=list)
    server_changed: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("reloading", self.replaced),
                ("updated", self.updated),
                ("server settings", self.server_changed),
            )
            if names
        ]
        return "; ".join(parts) or "no changes"

    def as_dict(self) -> dict[str, list[str]]:
        """The report served by POST /admin/reload."""
        return {
            "added": self.added,
            "removed": self.removed,
            "replaced": self.replaced,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "server_changed": self.server_changed,
            "restart_needed": self.restart_needed,
        }


def plan(old: Config, new: Config) -> Changes:
    """Compare two configs model by model."""
    changes = Changes()
    for name, spec in new.models.items():
        before = old.models.get(name)
        if before is None:
            changes.added.append(name)
        elif _identity(old, name) != _identity(new, name):
            changes.replaced.append(name)
        elif before != spec:
            changes.updated.append(name)
        else:
            changes.unchanged.append(name)
    changes.removed = [name for name in old.models if name not in new.models]
    old_server, new_server = old.server.model_dump(), new.server.model_dump()
    changes.server_changed = sorted(k for k in new_server if new_server[k] != old_server[k])
    changes.restart_needed = [k for k in changes.server_changed if k in RESTART_SETTINGS]
    return changes


def _identity(config: Config, name: str) -> object:
    identity = config.models[name].identity()
    with contextlib.suppress(ValueError):
        identity["source"] = str(config.source_of(name))  # "./x" from another dir differs
    return identity
