"""Loaders turn a models.yaml entry into a loaded `Model`.

- `pipeline`: any transformers pipeline task (`task:` + `source:`);
- `embeddings`: `task: sentence-embeddings`, mean-pooled, normalised sentence vectors;
- `python`: `loader: package.module:function`, a user's own code (plain PyTorch welcome);
- `fake`: `loader: fake`, a deterministic model of any size and speed, for tests and benchmarks.

Every loader runs in a worker thread and imports torch/transformers lazily.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from registry.config import ModelSpec
    from registry.sources import Source


class Model(Protocol):
    """A loaded model: one output per input, in order.

    Optional hook: `abort() -> None`. When a predict call runs past `predict_timeout`, the
    registry answers 504, marks the model failed and, if the model has an `abort()` method,
    calls it once from another thread so that the stuck call can be stopped (a model that runs
    in a worker process kills the worker there). It must be safe to call while predict runs
    and must not block for long; the model is closed once the stuck call returns.
    """

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """Predict a batch; raise ValueError/TypeError for inputs the model cannot use."""
        ...

    def close(self) -> None:
        """Drop every reference to weights so that memory can be freed."""
        ...


@dataclass(frozen=True)
class LoadContext:
    """What a loader gets: the model's name, its entry, its resolved source, the config's dir."""

    name: str
    spec: ModelSpec
    source: Source | None
    base_dir: Path  # the directory of models.yaml

    @property
    def options(self) -> dict[str, Any]:
        """The entry's free-form `options:` mapping."""
        return dict(self.spec.options)


def load_model(ctx: LoadContext) -> Model:
    """Load the model an entry describes (blocking; call it from a worker thread)."""
    spec = ctx.spec
    if spec.loader == "fake":
        from registry.loaders import fake

        return fake.load(ctx)
    if spec.loader is not None:
        from registry.loaders import python

        return python.load(ctx)
    if spec.task == "sentence-embeddings":
        from registry.loaders import embeddings

        return embeddings.load(ctx)
    from registry.loaders import pipeline

    return pipeline.load(ctx)
