"""Generation models in worker processes over HTTP: the unmodified openai client against a
real server (127.0.0.1, stopped by its PID) whose generation models run `isolation: process`:
the counter-gpt demo model (a tiny GPT-2 that counts in English words) and fake generators
that die or run long mid-stream; and the generation metrics of native predict.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from support import served, wait_for

from devkit.demo import STORE
from devkit.server import Process

pytestmark = pytest.mark.slow
COUNTING = ["five", "six", "seven", "eight", "nine", "ten"]


def _config() -> str:
    return f"""
server: {{memory_budget: 4GB, watch: false, retry_backoff: {{initial: 30, max: 30}}}}
models:
  counter:
    task: text-generation
    source: {STORE / "counter-gpt"}
    isolation: process
    max_tokens: 64
  dies:
    task: text-generation
    loader: fake
    isolation: process
    options: {{crash_after: 3}}
  short-lived:
    task: text-generation
    loader: fake
    isolation: process
    options: {{token_seconds: 0.05}}
    predict_timeout: 0.5
"""


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    with served(tmp_path_factory.mktemp("generation-process"), _config()) as process:
        yield process


@pytest.fixture
def oai(server: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def _model(server: Process, name: str) -> dict[str, object]:
    models = httpx.get(f"{server.url}/models", timeout=10).json()["models"]
    found: dict[str, object] = next(m for m in models if m["name"] == name)
    return found


def test_a_process_model_completes_and_chats_streaming_and_not(
    oai: openai.OpenAI, server: Process
) -> None:
    """Completions and chat, streamed and not, from a model in a worker process."""
    whole = oai.completions.create(
        model="counter", prompt="three four", max_tokens=6, temperature=0
    )
    assert whole.choices[0].text.split() == COUNTING
    assert whole.usage is not None and whole.usage.completion_tokens == 6
    stream = oai.completions.create(
        model="counter", prompt="three four", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream).split() == COUNTING
    chat = oai.chat.completions.create(
        model="counter", messages=[{"role": "user", "content": "count"}], temperature=0
    )
    counted = "one two three four five six seven eight nine ten"
    assert chat.choices[0].message.content == counted
    chunks = list(
        oai.chat.completions.create(
            model="counter",
            messages=[{"role": "user", "content": "count"}],
            temperature=0,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == counted
    entry = _model(server, "counter")
    assert entry["isolation"] == "process" and isinstance(entry["worker_pid"], int)


def test_a_worker_that_dies_mid_stream_ends_it_with_an_error_event(
    oai: openai.OpenAI, server: Process
) -> None:
    """The stream's worker dies after three tokens: the client gets them, then the stream's
    error event (raised by the openai client), not a hang; the model is failed."""
    stream = oai.completions.create(model="dies", prompt="x", max_tokens=50, stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk.choices[0].text)
    assert "".join(got) == " w0 w1 w2"
    assert "worker" in info.value.message
    wait_for(lambda: _model(server, "dies")["state"] == "failed", "the model is failed")


def test_a_process_stream_past_predict_timeout_ends_with_an_error_event(
    oai: openai.OpenAI,
) -> None:
    """A worker's stream longer than predict_timeout ends with an error event naming it."""
    stream = oai.completions.create(model="short-lived", prompt="x", max_tokens=1000, stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk.choices[0].text)
    assert got and "predict_timeout" in info.value.message


def _metric(server: Process, family: str, name: str) -> float:
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    prefix = f'model_registry_{family}{{model="{name}"}} '
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def test_native_predict_is_counted_in_the_generation_metrics(server: Process) -> None:
    """POST /models/<name>/predict on a generation model: its text, and its tokens and time
    to first token in /metrics, as for the OpenAI routes."""
    tokens = _metric(server, "generated_tokens_total", "counter")
    firsts = _metric(server, "time_to_first_token_seconds_count", "counter")
    answer = httpx.post(
        f"{server.url}/models/counter/predict",
        json={"inputs": "three four", "parameters": {"max_tokens": 3, "temperature": 0}},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == " five six seven"
    assert _metric(server, "generated_tokens_total", "counter") == tokens + 3
    assert _metric(server, "time_to_first_token_seconds_count", "counter") == firsts + 1
