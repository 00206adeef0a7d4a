"""The input path under a hostile user: texts past the model's length, oversized request heads
sent in any chunking, and predict_timeout with requests queued behind a stuck call."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

GERMAN = "Der Hund schläft heute im warmen Garten hinter dem alten Haus."


@pytest.fixture
def langid(tmp_path: Path, model_store: Path) -> Iterator[TestClient]:
    """The real app serving langid (a BERT that takes 128 tokens), batched as in models.yaml."""
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false}\nmodels:\n"
        "  langid:\n"
        "    task: text-classification\n"
        f"    source: {model_store}/langid-bert\n"
        "    batch: {max_size: 32, max_wait_ms: 5}\n"
    )
    with TestClient(create_app(path)) as client:
        yield client


@pytest.mark.slow
@pytest.mark.parametrize("off", [False, "do_not_truncate"])
def test_a_text_too_long_with_truncation_off_is_422_with_its_token_count(
    langid: TestClient, off: object
) -> None:
    """With truncation off, a ~1,400-token text for a 128-token model is the client's error:
    a 422 that gives the text's token count and the model's limit, not a 500 from inside the
    model; the same text with truncation on, and short texts with it off, still answer 200."""
    long_text = " ".join([GERMAN] * 100)
    response = langid.post(
        "/models/langid/predict", json={"inputs": long_text, "parameters": {"truncation": off}}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "bad_input"
    message = error["message"]
    assert "the model takes at most 128" in message, message
    tokens = int(message.split(" has ")[1].split()[0])
    assert tokens > 1000, message

    many = langid.post(
        "/models/langid/predict",
        json={"inputs": [GERMAN, long_text], "parameters": {"truncation": off}},
    )
    assert many.status_code == 422, many.text
    assert many.json()["error"]["message"].startswith(f"text 1 has {tokens} tokens"), many.text

    cut = langid.post("/models/langid/predict", json={"inputs": long_text})
    assert cut.status_code == 200, cut.text
    assert cut.json()["predictions"]["label"] == "de"
    short = langid.post(
        "/models/langid/predict", json={"inputs": [GERMAN], "parameters": {"truncation": off}}
    )
    assert short.status_code == 200, short.text
    assert short.json()["predictions"][0]["label"] == "de"
