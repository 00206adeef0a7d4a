"""Text generation in the core: streams under a lease, stop strings, limits, timeouts, drains.

The real manager drives the fake loader's generator (" w0 w1 ...", `token_seconds` per
token) for timing and fault cases, and the real counter-gpt demo model (a tiny GPT-2 that
counts in English words) for real decoding.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from support import problems_of, running, states, wait_until

from devkit.demo import STORE
from registry.config.file import load_config
from registry.config.schema import Config
from registry.errors import BadInput, CapacityExceeded, GenerationTimeout, ShuttingDown
from registry.generation import Chunk, GenerateRequest, Generation, Token, run_to_end
from registry.loaders import fake_generation
from registry.payload import TextRequest

pytestmark = pytest.mark.anyio
WriteConfig = Callable[[str], Config]


class Words:
    """A session that yields the given pieces of text, then the end."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = list(pieces)
        self.prompt_tokens = 3
        self.closed = False

    def step(self) -> Token:
        if not self.pieces:
            return Token("", "stop")
        return Token(self.pieces.pop(0))

    def close(self) -> None:
        self.closed = True


def test_a_stop_string_split_over_tokens_is_held_back_and_never_sent() -> None:
    """Text that may begin a stop string waits; once the stop string is whole, it is cut."""
    session = Words([" one", " tw", "o th", "ree"])
    generation = Generation(session, limit=10, stop=("two",))
    first = generation.advance()
    second = generation.advance()  # " tw": could begin "two": held
    third = generation.advance()  # "o th": "two" is whole: cut before it
    assert (first.text, second.text) == (" one", " ")
    assert (third.text, third.finish_reason) == ("", "stop")
    assert session.closed


def test_held_text_that_is_no_stop_string_is_sent_later() -> None:
    """A held prefix that turns out not to be a stop string is sent with the next token."""
    text, last = run_to_end(Generation(Words([" tw", "elve", " x"]), limit=10, stop=("two",)))
    assert text == " twelve x"
    assert (last.finish_reason, last.completion_tokens) == ("stop", 3)


def test_max_tokens_ends_a_generation_with_length() -> None:
    """The limit counts generated tokens; the generation ends with finish_reason length."""
    text, last = run_to_end(Generation(Words(["a", "b", "c", "d"]), limit=2))
    assert text == "ab"
    assert (last.finish_reason, last.completion_tokens, last.prompt_tokens) == ("length", 2, 3)


def _fake(name: str = "gen", *, extra: str = "", **options: object) -> str:
    opts = ", ".join(f"{k}: {v}" for k, v in options.items())
    return (
        f"  {name}:\n    task: text-generation\n    loader: fake\n    options: {{{opts}}}\n{extra}"
    )


async def _collect(chunks: object) -> list[Chunk]:
    return [chunk async for chunk in chunks]  # type: ignore[attr-defined]


async def test_a_stream_yields_a_start_chunk_then_tokens_and_counts_them(
    write_config: WriteConfig,
) -> None:
    """The first chunk is empty (started); then one chunk per token; stats count them."""
    config = write_config("models:\n" + _fake(words=3))
    async with running(config) as manager:
        chunks = await _collect(manager.stream("gen", GenerateRequest(prompt="a b")))
        assert [c.text for c in chunks] == ["", " w0", " w1", " w2", ""]
        assert chunks[0].prompt_tokens == 2 and chunks[-1].finish_reason == "stop"
        stats = manager.stats.of("gen")
        assert stats.generated_tokens == 3 and stats.first_token.count == 1
        assert states(manager)["gen"] == "loaded"


async def test_the_model_is_not_evicted_mid_stream(write_config: WriteConfig) -> None:
    """A stream holds its model's lease until its last token: a load that needs the room
    waits and gives up (503) instead of evicting it; once the stream ends, it may."""
    config = write_config(
        "server: {memory_budget: 10MB, capacity_wait: 0.2}\nmodels:\n"
        + _fake(size="6MB")
        + "  other:\n    loader: fake\n    options: {size: 6MB}\n"
    )
    async with running(config) as manager:
        stream = manager.stream("gen", GenerateRequest(prompt="x", max_tokens=50))
        assert (await anext(stream)).text == ""
        assert (await anext(stream)).text == " w0"
        with pytest.raises(CapacityExceeded):
            await manager.predict("other", TextRequest("x"))
        assert states(manager)["gen"] == "loaded"
        rest = await _collect(stream)
        assert rest[-1].finish_reason == "length" and rest[-1].completion_tokens == 50
        await manager.predict("other", TextRequest("x"))  # now gen is idle: evicted
        assert states(manager) == {"gen": "unloaded", "other": "loaded"}


async def test_a_stream_that_stops_being_read_runs_at_most_one_more_step(
    write_config: WriteConfig,
) -> None:
    """Closing the iterator (a client that went away) stops the generation and frees the
    lease; no further decoding step runs."""
    config = write_config("models:\n" + _fake(token_seconds=0.02))
    async with running(config) as manager:
        stream = manager.stream("gen", GenerateRequest(prompt="x", max_tokens=10_000))
        for _ in range(4):
            await anext(stream)
        await stream.aclose()
        slot_leases = lambda: manager.describe("gen").in_flight  # noqa: E731
        await wait_until(lambda: slot_leases() == 0, "the stream's lease is released")
        ran = fake_generation.steps("gen")
        assert ran <= 4
        await asyncio.sleep(0.1)  # five token times: a running generation would go on
        assert fake_generation.steps("gen") == ran


async def test_a_cancelled_stream_stops_within_one_token(write_config: WriteConfig) -> None:
    """A task reading a stream that is cancelled mid-step (the HTTP layer's disconnect)
    lets that one step finish and starts no other."""
    config = write_config("models:\n" + _fake(token_seconds=0.05))
    async with running(config) as manager:

        async def read() -> None:
            async for _ in manager.stream("gen", GenerateRequest(prompt="x", max_tokens=10_000)):
                pass

        reader = asyncio.get_running_loop().create_task(read())
        await wait_until(lambda: fake_generation.steps("gen") >= 3, "three tokens")
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        ran = fake_generation.steps("gen")
        await wait_until(lambda: manager.describe("gen").in_flight == 0, "the lease is released")
        assert fake_generation.steps("gen") <= ran + 1


async def test_a_stream_cancelled_mid_step_keeps_its_lease_until_the_step_ends(
    write_config: WriteConfig,
) -> None:
    """A stream whose reader goes away while a batched step with it runs holds its lease
    until that step returns (the model is never closed under a running call), and the other
    stream in the batch goes on."""
    config = write_config("models:\n" + _fake(token_seconds=0.5))
    async with running(config) as manager:
        loop = asyncio.get_running_loop()
        b_chunks: list[Chunk] = []

        async def read(into: list[Chunk]) -> None:
            async for chunk in manager.stream("gen", GenerateRequest(prompt="x", max_tokens=6)):
                into.append(chunk)

        a = loop.create_task(read([]))
        b = loop.create_task(read(b_chunks))
        batched = lambda: 2 in fake_generation.batches("gen")  # noqa: E731
        await wait_until(batched, "a step of both streams runs")
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        assert manager.describe("gen").in_flight == 2  # a's step still runs: its lease stays
        await wait_until(lambda: manager.describe("gen").in_flight == 1, "a's lease ends")
        await b
        assert b_chunks[-1].completion_tokens == 6


async def test_concurrent_streams_on_one_model_advance_together_per_token(
    write_config: WriteConfig,
) -> None:
    """Two streams on one model advance token by token in shared steps: the second gets
    its tokens while the first is still generating, not after its whole length."""
    config = write_config("models:\n" + _fake(token_seconds=0.01))
    async with running(config) as manager:
        order: list[str] = []

        async def read(tag: str) -> None:
            async for chunk in manager.stream("gen", GenerateRequest(prompt="x", max_tokens=20)):
                if chunk.text:
                    order.append(tag)

        await asyncio.gather(read("a"), read("b"))
        assert sorted(order) == ["a"] * 20 + ["b"] * 20
        first_b = order.index("b")
        assert first_b < order.index("a") + 3  # b starts at once...
        switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
        assert switches >= 10  # ...and they alternate, not one after the other
        assert max(fake_generation.batches("gen")) == 2  # one call stepped both


async def test_concurrent_streams_on_counter_gpt_decode_as_they_would_alone(
    model_store: Path, write_config: WriteConfig
) -> None:
    """Streams of different prompts decoded together (a batched forward pass over
    left-padded caches) give exactly the greedy text each gives alone."""
    prompts = ["three four", "eleven twelve thirteen", "hello five six", "nineteen"]
    async with running(write_config(_counter())) as manager:
        requests = [GenerateRequest(prompt=p, temperature=0, max_tokens=12) for p in prompts]
        alone = [(await _text(manager.stream("counter", r)))[0] for r in requests]
        together = await asyncio.gather(*(_text(manager.stream("counter", r)) for r in requests))
        assert [text for text, _ in together] == alone
        assert all(text.strip() for text in alone)


async def test_a_stream_past_predict_timeout_ends_with_an_error(write_config: WriteConfig) -> None:
    """A generation that runs longer than predict_timeout raises GenerationTimeout between
    two tokens; the model stays loaded and serves the next request."""
    config = write_config(
        "models:\n" + _fake(token_seconds=0.05, extra="    predict_timeout: 0.3\n")
    )
    async with running(config) as manager:
        got: list[Chunk] = []
        with pytest.raises(GenerationTimeout) as info:
            async for chunk in manager.stream("gen", GenerateRequest(prompt="x", max_tokens=1000)):
                got.append(chunk)
        assert 1 < len(got) < 1000
        assert "predict_timeout" in info.value.message
        assert states(manager)["gen"] == "loaded"
        short = await _collect(manager.stream("gen", GenerateRequest(prompt="x", max_tokens=2)))
        assert short[-1].finish_reason == "length"


async def test_shutdown_drains_a_stream_then_ends_the_rest_with_shutting_down(
    write_config: WriteConfig,
) -> None:
    """A short stream finishes during the drain; one longer than drain_timeout gets
    ShuttingDown when the drain ends, and the shutdown completes."""
    config = write_config("models:\n" + _fake(token_seconds=0.02))
    async with running(config) as manager:
        short = manager.stream("gen", GenerateRequest(prompt="x", max_tokens=5))
        long = manager.stream("gen", GenerateRequest(prompt="x", max_tokens=100_000))
        await anext(short)
        await anext(long)

        async def read_long() -> int:
            count = 0
            with pytest.raises(ShuttingDown):
                async for _ in long:
                    count += 1
            return count

        long_reader = asyncio.get_running_loop().create_task(read_long())
        short_reader = asyncio.get_running_loop().create_task(_collect(short))
        report = await manager.shutdown(drain_timeout=0.5)
        assert (await short_reader)[-1].finish_reason == "length"
        assert await long_reader > 0
        assert report["abandoned"] >= 1


async def test_a_big_generation_model_runs_in_a_thread_under_isolation_auto(
    write_config: WriteConfig,
) -> None:
    """isolation: auto (the default) keeps a text-generation model on the server's threads,
    whatever its size (each token would otherwise cross a pipe); only an explicit
    isolation: process puts it in a worker (tests/test_generation_process.py)."""
    config = write_config("server: {memory_budget: 1GB}\nmodels:\n" + _fake(words=2, size="500MB"))
    async with running(config) as manager:
        chunks = await _collect(manager.stream("gen", GenerateRequest(prompt="x")))
        assert "".join(c.text for c in chunks) == " w0 w1"
        assert manager.describe("gen").isolation == "thread"
        assert manager.stats.of("gen").misses == 1  # it waited for the load


async def test_a_stream_on_a_model_that_does_not_generate_is_bad_input(
    write_config: WriteConfig,
) -> None:
    """manager.stream on a classifier is a client error naming the model."""
    config = write_config("models:\n  cls:\n    loader: fake\n")
    async with running(config) as manager:
        with pytest.raises(BadInput, match="does not generate text"):
            await _collect(manager.stream("cls", GenerateRequest(prompt="x")))
        assert manager.describe("cls").in_flight == 0


def _counter(extra: str = "") -> str:
    return (
        f"models:\n  counter:\n    task: text-generation\n    source: {STORE / 'counter-gpt'}\n"
        f"    max_tokens: 16\n{extra}"
    )


async def test_counter_gpt_counts_on_from_its_prompt(
    model_store: Path, write_config: WriteConfig
) -> None:
    """Real decoding: greedy, the tiny GPT-2 continues 'three four' with 'five six ...';
    max_tokens above the entry's ceiling gets the ceiling; a stop string stops."""
    async with running(write_config(_counter())) as manager:
        greedy = GenerateRequest(prompt="three four", temperature=0, max_tokens=4)
        text, last = await _text(manager.stream("counter", greedy))
        assert text == " five six seven eight" and last.finish_reason == "length"
        capped = GenerateRequest(prompt="three four", temperature=0, max_tokens=1000)
        assert (await _text(manager.stream("counter", capped)))[1].completion_tokens == 16
        stop = GenerateRequest(prompt="three four", temperature=0, stop=(" seven",))
        text, last = await _text(manager.stream("counter", stop))
        assert text == " five six" and last.finish_reason == "stop"
        native = await manager.predict(
            "counter",
            TextRequest("three four", parameters={"max_tokens": 2, "temperature": 0}),
        )
        assert native == " five six"


async def test_the_same_seed_gives_the_same_text(
    model_store: Path, write_config: WriteConfig
) -> None:
    """Sampling at a high temperature is reproducible with a seed."""
    async with running(write_config(_counter())) as manager:
        hot = GenerateRequest(prompt="one two three", temperature=1.8, max_tokens=12, seed=7)
        first, _ = await _text(manager.stream("counter", hot))
        second, _ = await _text(manager.stream("counter", hot))
        assert first == second
        others = {
            (await _text(manager.stream("counter", replace(hot, seed=seed))))[0]
            for seed in range(5)
        }
        assert len(others) > 1  # the seed, not the model, makes it the same


async def test_a_tiny_top_p_samples_only_the_likeliest_token(
    model_store: Path, write_config: WriteConfig
) -> None:
    """top_p keeps the smallest set of tokens whose probability reaches it: at 0.01 only the
    likeliest is left, so even a hot temperature gives the greedy text, whatever the seed."""
    async with running(write_config(_counter())) as manager:
        greedy = GenerateRequest(prompt="one two three", temperature=0, max_tokens=10)
        expected, _ = await _text(manager.stream("counter", greedy))
        for seed in range(3):
            narrow = replace(greedy, temperature=1.8, top_p=0.01, seed=seed)
            assert (await _text(manager.stream("counter", narrow)))[0] == expected


async def test_native_predict_refuses_unknown_generation_parameters(
    model_store: Path, write_config: WriteConfig
) -> None:
    """A parameter the generation model does not take is the client's error, named."""
    async with running(write_config(_counter())) as manager:
        with pytest.raises(BadInput, match="num_beams"):
            await manager.predict("counter", TextRequest("x", parameters={"num_beams": 2}))


async def _text(chunks: object) -> tuple[str, Chunk]:
    got = await _collect(chunks)
    return "".join(c.text for c in got), got[-1]


def test_process_isolation_for_a_generation_model_is_valid(tmp_path: Path) -> None:
    """isolation: process on a text-generation entry is accepted (it streams from a worker)."""
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  g:\n    task: text-generation\n    loader: fake\n    isolation: process\n"
    )
    assert load_config(path).models["g"].isolation == "process"


def test_max_tokens_on_a_model_that_does_not_generate_is_a_config_error(tmp_path: Path) -> None:
    """max_tokens is a text-generation setting; elsewhere it is a mistake, named."""
    problems = problems_of(tmp_path, "models:\n  c:\n    loader: fake\n    max_tokens: 5\n")
    assert any("max_tokens" in p for p in problems), problems


async def test_native_predict_is_counted_like_a_stream(write_config: WriteConfig) -> None:
    """manager.predict on a generation model: each prompt's text, its tokens and its first
    token counted in the model's generation stats, one request recorded."""
    config = write_config("models:\n" + _fake(words=5))
    async with running(config) as manager:
        assert await manager.predict("gen", TextRequest("a", {"max_tokens": 2})) == " w0 w1"
        both = await manager.predict("gen", TextRequest(["a", "b c"], {"stop": " w2"}))
        assert both == [" w0 w1", " w0 w1"]
        stats = manager.stats.of("gen")
        assert stats.generated_tokens == 2 + 3 + 3 and stats.first_token.count == 3
        assert stats.requests["ok"] == 2 and manager.describe("gen").in_flight == 0
        with pytest.raises(BadInput):
            await manager.predict("gen", TextRequest([]))
