"""Text generation over HTTP: the unmodified openai client against a real server process.

One `model-registry serve` on 127.0.0.1 (stopped by its PID) with the counter-gpt demo
model (a tiny GPT-2 that counts in English words), a copy of it without a chat template,
and fake generators for disconnects and timeouts.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
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


def _config(plain: Path) -> str:
    return f"""
server: {{memory_budget: 100MiB, watch: false}}
models:
  counter:
    task: text-generation
    source: {STORE / "counter-gpt"}
    max_tokens: 64
  plain:
    task: text-generation
    source: {plain}
  slow:
    task: text-generation
    loader: fake
    options: {{token_seconds: 0.05}}
    max_tokens: 100000
  short-lived:
    task: text-generation
    loader: fake
    options: {{token_seconds: 0.05}}
    predict_timeout: 0.5
  spare:
    task: text-generation
    loader: fake
  vectors:
    loader: fake
"""


def _without_chat_template(target: Path) -> Path:
    shutil.copytree(STORE / "counter-gpt", target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config = target / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings.pop("chat_template", None)
    config.write_text(json.dumps(settings))
    return target


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("generation")
    with served(tmp, _config(_without_chat_template(tmp / "plain-gpt"))) as process:
        yield process


@pytest.fixture
def oai(server: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_a_completion_gets_the_model_s_tokens_and_usage(oai: openai.OpenAI) -> None:
    """A prompt gets tokens back (greedy: the model counts on), with token counts."""
    answer = oai.completions.create(
        model="counter", prompt="three four", max_tokens=6, temperature=0
    )
    (choice,) = answer.choices
    assert choice.text.split() == COUNTING and choice.finish_reason == "length"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 6)
    assert answer.usage.total_tokens == 8


def test_stop_stops_and_max_tokens_caps(oai: openai.OpenAI) -> None:
    """A stop string ends the text before it; max_tokens caps it, and the entry's ceiling
    caps a request that asks for more."""
    stopped = oai.completions.create(
        model="counter", prompt="three four", stop=[" eight"], temperature=0
    )
    assert stopped.choices[0].text == " five six seven"
    assert stopped.choices[0].finish_reason == "stop"
    three = oai.completions.create(
        model="counter", prompt="three four", max_tokens=3, temperature=0
    )
    assert three.choices[0].text == " five six seven"
    assert three.usage is not None and three.usage.completion_tokens == 3
    ceiling = oai.completions.create(
        model="counter", prompt="three four", max_tokens=5000, temperature=0
    )
    assert ceiling.usage is not None and ceiling.usage.completion_tokens == 64
    assert ceiling.choices[0].finish_reason == "length"


def test_the_same_seed_gives_the_same_text(oai: openai.OpenAI) -> None:
    """Sampling (temperature, top_p) is reproducible with a seed."""
    texts = {
        oai.completions.create(
            model="counter", prompt="one two", max_tokens=10, temperature=1.8, top_p=0.95, seed=3
        )
        .choices[0]
        .text
        for _ in range(3)
    }
    assert len(texts) == 1


def test_chat_goes_through_the_chat_template(oai: openai.OpenAI) -> None:
    """Messages become the prompt through the tokenizer's chat template; the model's end of
    sequence ends the answer (finish_reason stop)."""
    answer = oai.chat.completions.create(
        model="counter",
        messages=[{"role": "system", "content": "you count"}, {"role": "user", "content": "hi"}],
        temperature=0,
    )
    (choice,) = answer.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "one two three four five six seven eight nine ten"
    assert choice.finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == 10


def test_chat_streams_in_openai_chunks_and_ends(oai: openai.OpenAI) -> None:
    """stream=True: a role chunk, one chunk per token, the finish, the usage, the end."""
    stream = oai.chat.completions.create(
        model="counter",
        messages=[{"role": "user", "content": "count"}],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four five six seven eight nine ten"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert len({c.id for c in chunks}) == 1


def test_a_completion_streams_and_the_body_ends_with_done(
    oai: openai.OpenAI, server: Process
) -> None:
    """The SSE body is OpenAI's: `data: {chunk}` events and a last `data: [DONE]`."""
    stream = oai.completions.create(
        model="counter", prompt="three four", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream).split() == COUNTING
    body = {"model": "counter", "prompt": "three four", "max_tokens": 2, "stream": True}
    raw = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_chat_on_a_model_without_a_template_is_a_400(oai: openai.OpenAI) -> None:
    """A tokenizer without a chat template cannot take messages: 400 that says what to do;
    completions on the same model work."""
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="plain", messages=[{"role": "user", "content": "x"}])
    assert "no chat template" in info.value.message and "/v1/completions" in info.value.message
    text = oai.completions.create(model="plain", prompt="three four", max_tokens=2, temperature=0)
    assert text.choices[0].text == " five six"


def test_bad_requests_are_400s_naming_the_parameter(oai: openai.OpenAI) -> None:
    """n > 1, an embedding model, a temperature out of range: 400, with the parameter."""
    with pytest.raises(openai.BadRequestError) as many:
        oai.completions.create(model="counter", prompt="x", n=2)
    assert "n = 1" in many.value.message
    with pytest.raises(openai.BadRequestError) as wrong:
        oai.completions.create(model="vectors", prompt="x")
    assert "does not generate text" in wrong.value.message
    with pytest.raises(openai.BadRequestError) as hot:
        oai.completions.create(model="counter", prompt="x", temperature=5)
    assert "temperature" in hot.value.message
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="nope", prompt="x")


def test_a_bad_stream_flag_is_a_400_before_anything_loads(server: Process) -> None:
    """`stream` that is not a boolean: 400 naming it, checked before the model is loaded."""
    body = {"model": "spare", "prompt": "x", "stream": "yes", "max_tokens": 1}
    answer = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "stream"
    models = httpx.get(f"{server.url}/models", timeout=10).json()["models"]
    assert next(m["state"] for m in models if m["name"] == "spare") == "unloaded"


def test_models_lists_generation_models(oai: openai.OpenAI) -> None:
    """/v1/models lists the text-generation models (and not the classifier)."""
    listed = [m.id for m in oai.models.list()]
    assert {"counter", "plain", "slow", "spare"} <= set(listed) and "vectors" not in listed


def test_native_predict_returns_the_generated_text(server: Process) -> None:
    """POST /models/<name>/predict on a generation model: the generated text."""
    answer = httpx.post(
        f"{server.url}/models/counter/predict",
        json={"inputs": "three four", "parameters": {"max_tokens": 3, "temperature": 0}},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == " five six seven"


def _generated(server: Process, name: str) -> float:
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    prefix = f'model_registry_generated_tokens_total{{model="{name}"}} '
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def _in_flight(server: Process, name: str) -> int:
    models = httpx.get(f"{server.url}/models", timeout=10).json()["models"]
    return int(next(m["in_flight"] for m in models if m["name"] == name))


def test_a_client_that_disconnects_stops_its_generation(
    oai: openai.OpenAI, server: Process
) -> None:
    """Closing a stream mid-way ends the generation within a token or so: its lease is
    released and the tokens counted stay near what was read, not the 100000 asked for."""
    stream = oai.completions.create(model="slow", prompt="x", max_tokens=100_000, stream=True)
    read = 0
    for _ in stream:
        read += 1
        if read == 5:
            break
    stream.close()
    wait_for(lambda: _in_flight(server, "slow") == 0, "the stream's lease is released")
    generated = _generated(server, "slow")
    assert read <= generated <= read + 3
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'model_registry_time_to_first_token_seconds_count{model="slow"}' in metrics


def test_a_stream_past_predict_timeout_ends_with_an_error_event(oai: openai.OpenAI) -> None:
    """The openai client raises on the stream's last event, which names predict_timeout."""
    stream = oai.completions.create(model="short-lived", prompt="x", max_tokens=1000, stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk.choices[0].text)
    assert got and "predict_timeout" in info.value.message
    with pytest.raises(openai.InternalServerError) as plain:  # 504 without streaming
        oai.completions.create(model="short-lived", prompt="x", max_tokens=1000)
    assert plain.value.status_code == 504


def test_shutdown_ends_an_open_stream_with_an_error_chunk(
    model_store: Path, tmp_path: Path
) -> None:
    """SIGTERM during a stream longer than drain_timeout: the client gets tokens, then a
    final error event (shutting down), and the server exits."""
    config = """
server: {drain_timeout: 1, watch: false}
models:
  slow:
    task: text-generation
    loader: fake
    options: {token_seconds: 0.02}
    max_tokens: 100000
"""
    with (
        served(tmp_path, config) as process,
        openai.OpenAI(base_url=f"{process.url}/v1", api_key="x", max_retries=0) as client,
    ):
        stream = client.completions.create(
            model="slow", prompt="x", max_tokens=100_000, stream=True
        )
        got: list[str] = []
        failure: list[BaseException] = []

        def read() -> None:
            try:
                for chunk in stream:
                    got.append(chunk.choices[0].text)
            except openai.APIError as exc:
                failure.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: len(got) >= 3, "the first tokens")
        process.send(signal.SIGTERM)
        reader.join(timeout=60)
        assert not reader.is_alive()
        assert failure and "shutting" in str(failure[0]).lower(), failure
        assert process.wait(timeout=60) in (0, 3)


def test_a_nan_or_tiny_temperature_is_never_a_500(server: Process) -> None:
    """NaN (which Python's JSON reads) is a 400 naming `temperature`; a positive temperature
    too small for the softmax samples greedily instead of failing inside the model."""
    url = f"{server.url}/v1/completions"
    nan = httpx.post(
        url,
        content=b'{"model": "counter", "prompt": "three four", "temperature": NaN}',
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert nan.status_code == 400, nan.text
    assert "temperature" in nan.json()["error"]["message"]
    tiny = httpx.post(
        url,
        json={"model": "counter", "prompt": "three four", "max_tokens": 3, "temperature": 1e-40},
        timeout=60,
    )
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["text"] == " five six seven"


def test_deep_json_on_the_generation_routes_follows_the_shared_rule(server: Process) -> None:
    """The chat and completions bodies are read by the one JSON parser: 65 levels is a 400
    saying how deep JSON may nest (not 'send a JSON object')."""
    deep = "[" * 65 + "]" * 65
    for path in ("/v1/completions", "/v1/chat/completions"):
        body = f'{{"model": "counter", "prompt": {deep}}}'.encode()
        answer = httpx.post(
            f"{server.url}{path}",
            content=body,
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert answer.status_code == 400, answer.text
        assert "levels deep" in answer.json()["error"]["message"], answer.text
