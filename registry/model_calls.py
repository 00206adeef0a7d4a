"""What runs in a model's thread: a predict call made JSON-safe there, and closing a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from registry.memory.sizes import release_memory
from registry.payload import to_jsonable

if TYPE_CHECKING:
    from registry.loaders import Model


def predict_json(model: Model, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
    """In a worker thread: predict, and make the outputs JSON-safe there too."""
    return [to_jsonable(out) for out in model.predict(inputs, parameters)]


def dispose(result: tuple[Model | None, Any]) -> None:
    """In a worker thread: close a model and give its memory back."""
    model = result[0]
    if model is not None:
        model.close()
    del model, result
    release_memory()
