"""The input path under a hostile user: texts past the model's length, oversized request heads
sent in any chunking, and predict_timeout with requests queued behind a stuck call."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from support import ask, running, served, wait_until

from app.main import create_app
from devkit.server import Process
from registry.config.schema import Config
from registry.errors import BusyQueueFull
from registry.loaders import fake
from registry.payload import TextRequest

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


HEAD_LIMIT = 64 * 1024  # server.max_header_size in the fixture below


@pytest.fixture(scope="module")
def head_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A real server process with max_header_size 64 KiB (the default, stated)."""
    text = (
        "server: {memory_budget: 10MB, max_header_size: 64KiB, max_headers: 100, watch: false}\n"
        "models:\n  echo: {loader: fake, options: {size: 1kB}}\n"
    )
    with served(tmp_path_factory.mktemp("heads"), text) as process:
        yield process


def head_of(size: int) -> bytes:
    """A GET whose request line and headers are exactly `size` bytes, most of it one header."""
    start = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def answer_to(port: int, head: bytes, pieces: int) -> bytes:
    """Send `head` over a raw socket in `pieces` sends (1: one write); the server's answer."""
    step = -(-len(head) // pieces)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for start in range(0, len(head), step):
                sock.sendall(head[start : start + step])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it was all sent
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


@pytest.mark.slow
@pytest.mark.parametrize("pieces", [1, 2, 7, 40])
@pytest.mark.parametrize("size", [HEAD_LIMIT + 1, 100_000, 250_000])
def test_a_head_over_max_header_size_is_431_however_it_is_chunked(
    head_server: Process, size: int, pieces: int
) -> None:
    """A request head over server.max_header_size (64 KiB here) is refused with 431 whether it
    arrives in one write or in several: a 100 kB header in one piece used to get 200, because
    only the reads that left the head unfinished were counted."""
    answer = answer_to(head_server.port, head_of(size), pieces)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b'"type": "headers_too_large"' in answer
    assert httpx.get(f"{head_server.url}/health/live", timeout=10).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("pieces", [1, 3])
def test_a_head_at_max_header_size_is_served(head_server: Process, pieces: int) -> None:
    """A head of exactly server.max_header_size bytes is within the limit and answered 200."""
    answer = answer_to(head_server.port, head_of(HEAD_LIMIT), pieces)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


@pytest.mark.anyio
@pytest.mark.parametrize("batch", ["", ", batch: {max_size: 4, max_wait_ms: 1}"])
async def test_a_request_queued_behind_another_models_long_call_is_answered_at_its_timeout(
    write_config: Callable[[str], Config], batch: str
) -> None:
    """With one inference worker held by a call that lasts far longer than `quick`'s
    predict_timeout (1 s), a request to `quick` (batched or not) is answered 503 busy once its
    timeout has passed, while that call still runs, instead of after it; `quick` is not
    marked failed and serves again once the worker is free."""
    config = write_config(
        "server: {inference_workers: 1}\n"
        "models:\n"
        "  hog: {loader: fake, options: {predict_gate: hog}}\n"
        f"  quick: {{loader: fake, predict_timeout: 1s{batch}}}\n"
    )
    async with running(config) as manager:
        await manager.load("hog")
        await manager.load("quick")
        loop = asyncio.get_running_loop()
        hog = ask(manager, "hog", "long")
        await wait_until(lambda: manager.describe("hog").in_flight == 1, "hog's call is in")
        await asyncio.sleep(0.05)  # its call holds the one worker
        sent = loop.time()
        quick = ask(manager, "quick", "short")
        done, _ = await asyncio.wait({quick}, timeout=15)  # the old code waited for the gate
        waited = loop.time() - sent
        assert quick in done and not hog.done(), "quick waited for hog's call to end"
        error = quick.exception()
        assert isinstance(error, BusyQueueFull), repr(error)
        assert error.kind == "busy" and "predict_timeout" in error.message
        assert waited >= 0.9, waited  # not before its timeout
        fake.open_gate("hog")
        assert await asyncio.wait_for(hog, 10) is not None
        assert manager.describe("quick").state == "loaded"
        assert await asyncio.wait_for(manager.predict("quick", TextRequest("x")), 10)


@pytest.mark.anyio
@pytest.mark.parametrize("batch", ["", ", batch: {max_size: 1, max_wait_ms: 1}"])
async def test_a_request_queued_past_predict_timeout_does_not_wait_for_the_calls_ahead(
    write_config: Callable[[str], Config], batch: str
) -> None:
    """Three requests at once on a model whose calls take 2 s, under predict_timeout 3 s:
    the first two start within their timeout and are served; the third is still queued when
    its timeout passes and is answered 503 busy then, before the second call ends, instead of
    being served after both calls ahead of it (at about twice its timeout)."""
    config = write_config(
        "models:\n"
        f"  m: {{loader: fake, predict_timeout: 3s, options: {{predict_seconds: 2}}{batch}}}\n"
    )
    async with running(config) as manager:
        await manager.load("m")
        first, second, third = (ask(manager, "m", text) for text in ("a", "b", "c"))
        done, _ = await asyncio.wait({second, third}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {third}, "the third request waited for the second call to end"
        error = third.exception()
        assert isinstance(error, BusyQueueFull), repr(error)
        assert "waited 3s (predict_timeout) behind" in error.message
        assert await asyncio.wait_for(first, 10) is not None
        assert await asyncio.wait_for(second, 10) is not None
        assert manager.describe("m").state == "loaded"
