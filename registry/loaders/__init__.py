"""Loaders turn a models.yaml entry into a loaded `Model`.

- `pipeline`: any transformers pipeline task (`task:` + `source:`);
- `embeddings`: `task: sentence-embeddings`, mean-pooled, normalised sentence vectors;
- `generation`: `task: text-generation`, causal LMs decoded one token per step (streams);
- `python`: `loader: package.module:function`, a user's own code (plain PyTorch welcome);
- `fake`: `loader: fake`, a deterministic model of any size and speed, for tests and benchmarks.

Each is a module with `load(ctx) -> Model` and `estimate_bytes(spec, source) -> int | None`
(the `Loader` protocol in `interface.py`); `loader_for` picks it. Every loader runs in a
worker thread and imports torch/transformers lazily, in `load`, never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from registry.config.schema import GENERATION_TASK
from registry.loaders.interface import LoadContext, Loader, Model

if TYPE_CHECKING:
    from registry.config.schema import ModelSpec
    from registry.sources import Source

__all__ = ["LoadContext", "Loader", "Model", "estimate_bytes", "load_model", "loader_for"]


def loader_for(spec: ModelSpec) -> Loader:
    """The loader module of an entry (importing it imports no torch or transformers)."""
    if spec.loader == "fake":
        from registry.loaders import fake

        return fake
    if spec.loader is not None:
        from registry.loaders import python

        return python
    if spec.task == GENERATION_TASK:
        from registry.loaders import generation

        return generation
    if spec.task == "sentence-embeddings":
        from registry.loaders import embeddings

        return embeddings
    from registry.loaders import pipeline

    return pipeline


def load_model(ctx: LoadContext) -> Model:
    """Load the model an entry describes (blocking; call it from a worker thread)."""
    return loader_for(ctx.spec).load(ctx)


def estimate_bytes(spec: ModelSpec, source: Source | None) -> int | None:
    """Bytes the model will hold once loaded: the entry's size_hint, else its loader's estimate."""
    if spec.size_hint is not None:
        return spec.size_hint
    return loader_for(spec).estimate_bytes(spec, source)
