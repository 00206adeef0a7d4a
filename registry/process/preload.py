"""What a process pays on its first load, paid before a worker's load: once in the worker
forkserver (imported last by it, see PRELOAD in registry/process/forkserver.py; importing
this module runs `warm_up`), and by each spare worker while it waits (`practice`).

A process model's worker makes exactly one load, so every cost that a process pays on its
first load only is paid on every worker's load. Measured on a langid load in a fresh
process with torch and transformers imported: 0.30 s against 0.08 s for a second load, of
which ~0.2-0.4 s is transformers compiling ~900 regular expressions for its table of
checkpoint conversions (`transformers.conversion_mapping`), built on the first
`from_pretrained` and cached in the module. Built here, the table (and re's cache of the
compiled patterns, made large enough to hold them) is inherited by every worker. Nothing
here may fail the forkserver: a transformers without that table is simply not warmed.
"""

from __future__ import annotations

import contextlib
import importlib
import re


def warm_up() -> None:
    """Build what a first `from_pretrained` builds and caches (best effort)."""
    # re keeps 512 compiled patterns; the table compiles ~900, and a load compiles again the
    # ones evicted (measured: 56 for langid, ~15 ms). Keep them all.
    if getattr(re, "_MAXCACHE", 4096) < 4096:
        re._MAXCACHE = 4096  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        mapping = importlib.import_module("transformers.conversion_mapping")
        getter = getattr(mapping, "get_checkpoint_conversion_mapping", None)
        if callable(getter):
            getter("bert")


warm_up()


def practice() -> None:
    """In a spare worker, while it waits: build and run tiny models of the common families
    (random weights, a few KB), so that the first-call costs of transformers' model
    construction and of torch's kernels are paid before the load (best effort)."""
    with contextlib.suppress(Exception):
        import torch
        import transformers

        bert = transformers.BertConfig(
            vocab_size=64,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            intermediate_size=8,
            max_position_embeddings=16,
        )
        resnet = transformers.ResNetConfig(
            embedding_size=4, hidden_sizes=[4], depths=[1], num_labels=2
        )
        with torch.inference_mode():
            text = transformers.BertForSequenceClassification(bert).eval()
            text(input_ids=torch.ones(1, 4, dtype=torch.long))
            image = transformers.ResNetForImageClassification(resnet).eval()
            image(pixel_values=torch.zeros(1, 3, 16, 16))
        del text, image
