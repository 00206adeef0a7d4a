"""The plain PyTorch demo model (no transformers): iris-mlp, served by a custom loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demo_data import (
    IRIS_FEATURES,
    IRIS_HIDDEN,
    IRIS_LABELS,
    SEED,
    BuildError,
    accuracy_of,
    require,
    seed_everything,
)

from registry.demo.iris import network

if TYPE_CHECKING:
    import torch

# ============================================================================
# iris-mlp
# ============================================================================


def _iris_model() -> torch.nn.Sequential:
    """The network registry.demo.iris serves, with the demo's sizes."""
    model: torch.nn.Sequential = network(len(IRIS_FEATURES), IRIS_HIDDEN, len(IRIS_LABELS))
    return model


def build_iris_mlp(out: Path) -> dict[str, object]:
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from sklearn.datasets import load_iris

    seed_everything()
    data = load_iris()
    order = np.random.RandomState(SEED).permutation(len(data.target))
    split = len(order) * 4 // 5
    x = torch.tensor(data.data[order], dtype=torch.float32)
    y = torch.tensor(data.target[order], dtype=torch.long)
    mean, std = x[:split].mean(0), x[:split].std(0)
    x = (x - mean) / std
    model = _iris_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(x[:split]), y[:split])
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
    with torch.no_grad():
        accuracy = float((model(x[split:]).argmax(-1) == y[split:]).float().mean())
    require("iris-mlp held-out accuracy", accuracy, 0.90)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    config = {
        "feature_names": IRIS_FEATURES,
        "labels": IRIS_LABELS,
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "hidden": IRIS_HIDDEN,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _verify_iris(out, data.data[order][split:], data.target[order][split:], accuracy)
    return {"accuracy": round(accuracy, 4), "held_out": len(order) - split, "steps": 300}


def _verify_iris(path: Path, features: Any, targets: Any, accuracy: float) -> None:
    import torch
    from safetensors.torch import load_file

    config = json.loads((path / "config.json").read_text())
    model = _iris_model()
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    x = (torch.tensor(features, dtype=torch.float32) - torch.tensor(config["mean"])) / torch.tensor(
        config["std"]
    )
    with torch.no_grad():
        predicted = model(x).argmax(-1).tolist()
    reloaded = accuracy_of(predicted, [int(t) for t in targets])
    if abs(reloaded - accuracy) > 0.05:
        raise BuildError(f"iris-mlp reloaded accuracy {reloaded:.1%} != {accuracy:.1%}")
