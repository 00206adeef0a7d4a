"""A custom loader for a plain PyTorch model (no transformers): the iris MLP.

models.yaml:
    iris:
      loader: registry.demo.iris:load
      source: ./model-store/iris-mlp      # model.safetensors + config.json
      input: json

Each input is four measurements in cm, as a list [5.1, 3.5, 1.4, 0.2] or as an object
{"sepal_length": 5.1, ...}; each output is {"label": ..., "scores": {label: probability}}.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from registry.loaders import LoadContext


class IrisModel:
    """Standardise, run the MLP, softmax."""

    def __init__(self, module: Any, config: Mapping[str, Any]) -> None:
        self.module = module
        self.features: list[str] = list(config["feature_names"])
        self.labels: list[str] = list(config["labels"])
        self.mean: list[float] = list(config["mean"])
        self.std: list[float] = list(config["std"])
        self._lock = threading.Lock()

    def _row(self, item: Any) -> list[float]:
        if isinstance(item, Mapping):
            missing = [f for f in self.features if f not in item]
            if missing:
                raise ValueError(f"missing features {missing}; expected {self.features}")
            item = [item[f] for f in self.features]
        if (
            not isinstance(item, Sequence)
            or isinstance(item, str)
            or len(item) != len(self.features)
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in item)
        ):
            raise ValueError(f"each input must be {len(self.features)} numbers: {self.features}")
        return [(float(v) - m) / s for v, m, s in zip(item, self.mean, self.std, strict=True)]

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """Classify each flower."""
        import torch

        if parameters:
            raise ValueError("the iris model takes no parameters")
        batch = torch.tensor([self._row(item) for item in inputs], dtype=torch.float32)
        with self._lock, torch.inference_mode():
            probabilities = torch.softmax(self.module(batch), dim=1).tolist()
        return [
            {
                "label": self.labels[max(range(len(row)), key=row.__getitem__)],
                "scores": {label: round(p, 6) for label, p in zip(self.labels, row, strict=True)},
            }
            for row in probabilities
        ]

    def close(self) -> None:
        """Drop the weights."""
        self.module = None


def network(features: int, hidden: int, classes: int) -> Any:
    """The MLP: features -> hidden (ReLU) -> class logits; scripts/ trains the same one."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)
    )


def load(ctx: LoadContext) -> IrisModel:
    """Build the MLP and load its safetensors weights (no pickle)."""
    from safetensors.torch import load_file

    if ctx.source is None or ctx.source.path is None:
        raise ValueError("the iris loader needs 'source:', the directory built by scripts/")
    directory = ctx.source.path
    config = json.loads((directory / "config.json").read_text())
    hidden = int(config.get("hidden", 16))
    module = network(len(config["feature_names"]), hidden, len(config["labels"]))
    module.load_state_dict(load_file(str(directory / "model.safetensors")))
    return IrisModel(module.eval(), config)
