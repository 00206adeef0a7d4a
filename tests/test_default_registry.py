"""The default models.yaml: every real model answers, and the budget forces evictions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import ROOT, builders, digit_png

from app.main import create_app
from registry.config.file import load_config

pytestmark = pytest.mark.slow


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_the_default_registry_is_valid_and_has_a_hot_model(model_store: Path) -> None:
    config = load_config(ROOT / "models.yaml")
    assert {"digits", "langid", "minilm", "iris", "bert-memory-demo", "counter"} <= set(
        config.models
    )
    assert any(spec.hot for spec in config.models.values())
    assert config.server.host == "127.0.0.1"


def test_every_default_model_predicts_and_the_budget_evicts(model_store: Path) -> None:
    with TestClient(create_app(ROOT / "models.yaml")) as client:
        png, label = digit_png(1500), builders().digit_label(1500)
        digits = client.post("/models/digits/predict", files={"file": ("d.png", png)})
        assert digits.status_code == 200, digits.text
        assert digits.json()["predictions"][0]["label"] == str(label)

        langid = client.post("/models/langid/predict", json={"inputs": "Der Hund ist sehr gut"})
        assert langid.status_code == 200, langid.text

        minilm = client.post(
            "/models/minilm/predict",
            json={"inputs": ["A man is eating food.", "A man is eating a piece of bread."]},
        )
        assert minilm.status_code == 200, minilm.text
        first, second = minilm.json()["predictions"]
        assert len(first) == 384
        assert cosine(first, second) == pytest.approx(0.755, abs=0.01)

        flower = {"sepal_length": 5.9, "sepal_width": 3.0, "petal_length": 5.1, "petal_width": 1.8}
        iris = client.post("/models/iris/predict", json={"inputs": flower})
        assert iris.status_code == 200, iris.text
        assert iris.json()["predictions"]["label"] == "virginica"

        counting = {"inputs": "three four", "parameters": {"max_tokens": 3, "temperature": 0}}
        counter = client.post("/models/counter/predict", json=counting)
        assert counter.status_code == 200, counter.text
        assert counter.json()["predictions"] == " five six seven"

        demo = client.post("/models/bert-memory-demo/predict", json={"inputs": "memory"})
        assert demo.status_code == 200, demo.text
        assert len(demo.json()["predictions"]) == 768

        listing = client.get("/models").json()
        states = {m["name"]: m["state"] for m in listing["models"]}
        assert states["bert-memory-demo"] == "loaded"
        assert states["minilm"] == "unloaded"  # evicted: both do not fit in 300 MiB
        assert listing["used_bytes"] <= listing["budget_bytes"]
        assert listing["peak_used_bytes"] <= listing["budget_bytes"]
