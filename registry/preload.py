"""What the worker forkserver does once so that no worker's load does it (imported last by
the forkserver, see PRELOAD in registry/processes.py; importing it runs the warm-up).

A process model's worker makes exactly one load, so every cost that a process pays on its
first load only is paid on every worker's load. Measured on a langid load in a fresh
process with torch and transformers imported: 0.30 s against 0.08 s for a second load, of
which ~0.2-0.4 s is transformers compiling ~900 regular expressions for its table of
checkpoint conversions (`transformers.conversion_mapping`), built on the first
`from_pretrained` and cached in the module. Built here, the table (and re's cache of the
compiled patterns) is inherited by every worker. Nothing here may fail the forkserver: a
transformers without that table is simply not warmed.
"""

from __future__ import annotations

import contextlib
import importlib


def warm_up() -> None:
    """Build what a first `from_pretrained` builds and caches (best effort)."""
    with contextlib.suppress(Exception):
        mapping = importlib.import_module("transformers.conversion_mapping")
        getter = getattr(mapping, "get_checkpoint_conversion_mapping", None)
        if callable(getter):
            getter("bert")


warm_up()
