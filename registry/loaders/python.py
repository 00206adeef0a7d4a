"""`loader: package.module:function`: serve your own Python code.

The function receives a `LoadContext` (name, entry, resolved source, options) and returns one of:
- an object with `predict(inputs, parameters) -> list` (one output per input) and, optionally,
  `close()` and an int `size_bytes`;
- a `torch.nn.Module`: each input is a list of numbers, run as one float32 batch;
- any other callable: called as `fn(inputs)` and must return one output per input.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from registry.loaders.interface import LoadContext, Model
from registry.loaders.torch_setup import prepare_torch
from registry.memory.sizes import weight_files_bytes

if TYPE_CHECKING:
    from registry.config.schema import ModelSpec
    from registry.sources import Source


class CallableModel:
    """Wraps a plain callable or a torch module."""

    def __init__(self, fn: Callable[..., Any], *, is_module: bool) -> None:
        self.module: Any = fn if is_module else None
        self._fn: Callable[..., Any] | None = fn
        self._is_module = is_module

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """Call the function (or the module on a float32 batch)."""
        if parameters:
            raise ValueError("this model takes no parameters")
        if self._fn is None:
            raise RuntimeError("the model was unloaded")
        if not self._is_module:
            return list(self._fn(list(inputs)))
        import torch

        batch = torch.as_tensor(list(inputs), dtype=torch.float32)
        with torch.inference_mode():
            return list(self._fn(batch).tolist())

    def close(self) -> None:
        """Drop the function."""
        self._fn = None
        self.module = None


class ObjectModel:
    """Wraps an object that has its own predict()."""

    def __init__(self, obj: Any) -> None:
        self.model = obj

    @property
    def size_bytes(self) -> int | None:
        """What the object reports, else None (then torch modules in it are measured)."""
        size = getattr(self.model, "size_bytes", None)
        return size if isinstance(size, int) else None

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """Delegate, and check that there is one output per input."""
        outputs = list(self.model.predict(list(inputs), dict(parameters)))
        if len(outputs) != len(inputs):
            raise RuntimeError(f"predict returned {len(outputs)} outputs for {len(inputs)} inputs")
        return outputs

    def abort(self) -> None:
        """Ask the object to stop a stuck predict, if it can (its own abort())."""
        abort = getattr(self.model, "abort", None)
        if callable(abort):
            abort()

    def close(self) -> None:
        """Call the object's close(), if any, and drop it."""
        close = getattr(self.model, "close", None)
        if callable(close):
            close()
        self.model = None


def import_loader(ref: str, search_dir: str | None = None) -> Callable[[LoadContext], Any]:
    """Import `package.module:function`, also looking beside models.yaml."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if search_dir is None or exc.name != module_name.split(".")[0]:
            raise
        if search_dir not in sys.path:
            sys.path.append(search_dir)
        module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ImportError(f"{module_name} has no callable {attr!r}")
    return fn  # type: ignore[no-any-return]


def load(ctx: LoadContext) -> Model:
    """Import and call the entry's loader, then wrap what it returns."""
    assert ctx.spec.loader is not None
    fn = import_loader(ctx.spec.loader, str(ctx.base_dir))
    obj = fn(ctx)
    if hasattr(obj, "predict"):
        return ObjectModel(obj)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.nn.Module):
        prepare_torch()
        return CallableModel(obj.eval(), is_module=True)
    if callable(obj):
        return CallableModel(obj, is_module=False)
    raise TypeError(f"loader {ctx.spec.loader} returned {type(obj).__name__}, not a model")


def estimate_bytes(spec: ModelSpec, source: Source | None) -> int | None:
    """What the weight files of the entry's source hold (None without one: set size_hint)."""
    return weight_files_bytes(source, spec.dtype)
