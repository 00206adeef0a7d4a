"""Text generation in a worker process (`isolation: process`), through the real manager.

Real worker processes run the real counter-gpt demo model (a tiny GPT-2 that counts in
English words) and the fake loader's generator (" w0 w1 ...") for disconnects, timeouts,
crashes and drains; each decoding step crosses the worker's pipe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from support import running, states, wait_until
from worker_support import forkserver  # noqa: F401 (a fixture)

from devkit.demo import STORE
from registry.config.schema import Config
from registry.errors import GenerationTimeout, InferenceTimeout, ShuttingDown, WorkerDied
from registry.generation import Chunk, GenerateRequest
from registry.payload import TextRequest

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.usefixtures("forkserver")]
WriteConfig = Callable[[str], Config]

SERVER = """
server:
  memory_budget: 2GB
  watch: false
  retry_backoff: {initial: 30, max: 30}
  load_timeout: 60s
models:
"""


def _fake(name: str = "gen", *, extra: str = "", **options: object) -> str:
    opts = ", ".join(f"{k}: {v}" for k, v in options.items())
    return (
        f"  {name}:\n    task: text-generation\n    loader: fake\n    isolation: process\n"
        f"    options: {{{opts}}}\n{extra}"
    )


def _counter(name: str, isolation: str) -> str:
    return (
        f"  {name}:\n    task: text-generation\n    source: {STORE / 'counter-gpt'}\n"
        f"    isolation: {isolation}\n    max_tokens: 64\n"
    )


async def _collect(chunks: object) -> list[Chunk]:
    return [chunk async for chunk in chunks]  # type: ignore[attr-defined]


def _greedy(prompt: str, **knobs: object) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, temperature=0, **knobs)  # type: ignore[arg-type]


async def test_a_real_model_generates_the_same_in_a_worker_as_in_a_thread(
    write_config: WriteConfig, model_store: Path
) -> None:
    """counter-gpt in a worker: the same greedy text, stop strings and max_tokens as in a
    thread; the model runs in a worker process; native predict gives the same text."""
    config = write_config(
        SERVER + _counter("in-thread", "thread") + _counter("in-worker", "process")
    )
    async with running(config) as manager:
        texts = {}
        for name in ("in-thread", "in-worker"):
            chunks = await _collect(manager.stream(name, _greedy("three four", max_tokens=4)))
            texts[name] = "".join(c.text for c in chunks)
            assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 4
        assert texts["in-worker"] == texts["in-thread"] == " five six seven eight"
        stopped = await _collect(
            manager.stream("in-worker", _greedy("three four", max_tokens=20, stop=(" seven",)))
        )
        assert "".join(c.text for c in stopped) == " five six"
        assert stopped[-1].finish_reason == "stop"
        assert manager.describe("in-worker").isolation == "process"
        assert (manager.describe("in-worker").worker.pid or 0) > 0
        native = await manager.predict(
            "in-worker", TextRequest("three four", {"max_tokens": 3, "temperature": 0})
        )
        assert native == " five six seven"


async def test_concurrent_streams_on_a_process_model_are_batched(
    write_config: WriteConfig, model_store: Path
) -> None:
    """Four concurrent streams on a worker's model: every one gets its own text (each as
    it would alone), their steps batched into shared round trips."""
    config = write_config(SERVER + _counter("counter", "process"))
    async with running(config) as manager:
        prompts = ["one two", "three four", "five six", "seven eight"]
        alone = []
        for prompt in prompts:
            chunks = await _collect(manager.stream("counter", _greedy(prompt, max_tokens=6)))
            alone.append("".join(c.text for c in chunks))
        together = await asyncio.gather(
            *(_collect(manager.stream("counter", _greedy(p, max_tokens=6))) for p in prompts)
        )
        assert ["".join(c.text for c in chunks) for chunks in together] == alone


async def test_a_stream_that_stops_being_read_frees_the_worker_at_once(
    write_config: WriteConfig,
) -> None:
    """A consumer that closes its stream (a client gone): the lease is released, at most
    one more token is counted, and the worker answers the next stream at once."""
    config = write_config(SERVER + _fake(token_seconds=0.02))
    async with running(config) as manager:
        stream = manager.stream("gen", GenerateRequest(prompt="x", max_tokens=100_000))
        for _ in range(4):
            await anext(stream)
        await stream.aclose()
        await wait_until(lambda: manager.describe("gen").in_flight == 0, "the lease is released")
        assert manager.stats.of("gen").generated_tokens <= 4
        again = await _collect(manager.stream("gen", GenerateRequest(prompt="x", max_tokens=3)))
        assert "".join(c.text for c in again) == " w0 w1 w2"


async def test_a_cancelled_stream_on_a_process_model_stops(write_config: WriteConfig) -> None:
    """A task reading a worker's stream that is cancelled mid-step ends; the lease is
    released once that step is back, and no further step is asked for."""
    config = write_config(SERVER + _fake(token_seconds=0.05))
    async with running(config) as manager:
        got: list[Chunk] = []

        async def read() -> None:
            async for chunk in manager.stream("gen", GenerateRequest(prompt="x", max_tokens=10**5)):
                got.append(chunk)

        reader = asyncio.ensure_future(read())
        await wait_until(lambda: len(got) >= 3, "the first tokens")
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await wait_until(lambda: manager.describe("gen").in_flight == 0, "the lease is released")
        counted = manager.stats.of("gen").generated_tokens
        assert counted <= len(got) + 1
        assert manager.stats.of("gen").requests["cancelled"] == 1


async def test_a_process_stream_past_predict_timeout_ends_with_an_error(
    write_config: WriteConfig,
) -> None:
    """Steps well inside predict_timeout, a stream longer than it: GenerationTimeout between
    two tokens; the worker lives on and serves the next stream."""
    config = write_config(SERVER + _fake(token_seconds=0.05, extra="    predict_timeout: 0.3\n"))
    async with running(config) as manager:
        got: list[Chunk] = []
        with pytest.raises(GenerationTimeout) as info:
            async for chunk in manager.stream("gen", GenerateRequest(prompt="x", max_tokens=10**5)):
                got.append(chunk)
        assert len(got) > 1 and "predict_timeout" in info.value.message
        pid = manager.describe("gen").worker.pid
        again = await _collect(manager.stream("gen", GenerateRequest(prompt="x", max_tokens=2)))
        assert again[-1].finish_reason == "length"
        assert manager.describe("gen").worker.pid == pid


async def test_a_step_stuck_in_the_worker_kills_it_and_ends_the_stream(
    write_config: WriteConfig,
) -> None:
    """A step that never returns: past predict_timeout the worker is killed, the stream
    raises InferenceTimeout after its first tokens, and the model is no longer loaded."""
    config = write_config(SERVER + _fake(hang_after=3, extra="    predict_timeout: 1\n"))
    async with running(config) as manager:
        got: list[Chunk] = []
        with pytest.raises(InferenceTimeout):
            async for chunk in manager.stream("gen", GenerateRequest(prompt="x", max_tokens=50)):
                got.append(chunk)
        assert [c.text for c in got] == ["", " w0", " w1", " w2"]
        await wait_until(lambda: states(manager)["gen"] != "loaded", "the model is unloaded")
        assert manager.describe("gen").in_flight == 0


async def test_a_worker_that_dies_mid_stream_ends_it_with_an_error(
    write_config: WriteConfig,
) -> None:
    """The worker dies by SIGKILL at the fourth token: the stream raises WorkerDied after
    the first three (no hang), the model is failed and unloaded, its bytes released."""
    config = write_config(SERVER + _fake(crash_after=3))
    async with running(config) as manager:
        got: list[Chunk] = []
        with pytest.raises(WorkerDied) as info:
            async for chunk in manager.stream("gen", GenerateRequest(prompt="x", max_tokens=50)):
                got.append(chunk)
        assert [c.text for c in got] == ["", " w0", " w1", " w2"]
        assert "SIGKILL" in info.value.message
        await wait_until(lambda: states(manager)["gen"] == "failed", "the model is failed")
        assert manager.describe("gen").in_flight == 0
        assert manager.snapshot().used_bytes == 0


async def test_concurrent_streams_all_end_when_their_worker_dies(
    write_config: WriteConfig,
) -> None:
    """Three streams on one worker that dies: every one ends with WorkerDied."""
    config = write_config(SERVER + _fake(crash_after=5, token_seconds=0.01))
    async with running(config) as manager:

        async def one() -> BaseException | None:
            try:
                await _collect(manager.stream("gen", GenerateRequest(prompt="x", max_tokens=50)))
            except WorkerDied as exc:
                return exc
            return None

        outcomes = await asyncio.gather(one(), one(), one())
        assert all(isinstance(o, WorkerDied) for o in outcomes), outcomes
        assert manager.describe("gen").in_flight == 0


async def test_shutdown_ends_a_process_stream_after_the_drain(write_config: WriteConfig) -> None:
    """A worker's stream longer than drain_timeout: ShuttingDown between two tokens once the
    drain is over; the shutdown ends the worker."""
    config = write_config(SERVER + _fake(token_seconds=0.02))
    async with running(config) as manager:
        got: list[Chunk] = []

        async def read() -> None:
            async for chunk in manager.stream("gen", GenerateRequest(prompt="x", max_tokens=10**5)):
                got.append(chunk)

        reader = asyncio.ensure_future(read())
        await wait_until(lambda: len(got) >= 3, "the first tokens")
        await manager.shutdown(drain_timeout=0.2)
        with pytest.raises(ShuttingDown):
            await reader
        assert states(manager)["gen"] == "unloaded"


async def test_native_predict_on_a_process_model_counts_its_tokens(
    write_config: WriteConfig,
) -> None:
    """POST /models/<name>/predict's path on a worker's generator: each prompt's text, and
    the generated tokens and first tokens counted as for streams."""
    config = write_config(SERVER + _fake(words=3))
    async with running(config) as manager:
        got = await manager.predict("gen", TextRequest(["a", "b"], {"max_tokens": 2}))
        assert got == [" w0 w1", " w0 w1"]
        stats = manager.stats.of("gen")
        assert stats.generated_tokens == 4 and stats.first_token.count == 2
        assert stats.requests["ok"] == 1


async def test_server_wide_process_isolation_puts_a_generation_model_in_a_worker(
    write_config: WriteConfig,
) -> None:
    """server.isolation: process applies to text-generation models too (entry first, then
    the server's setting; only auto keeps them in threads)."""
    config = write_config(
        SERVER.replace("server:\n", "server:\n  isolation: process\n")
        + "  gen:\n    task: text-generation\n    loader: fake\n    options: {words: 2}\n"
    )
    async with running(config) as manager:
        chunks = await _collect(manager.stream("gen", GenerateRequest(prompt="x")))
        assert "".join(c.text for c in chunks) == " w0 w1"
        assert manager.describe("gen").isolation == "process"
