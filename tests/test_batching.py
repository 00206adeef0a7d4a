"""Dynamic batching: grouped calls, the same predictions, errors that stay with their input."""

from __future__ import annotations

import asyncio

import pytest
from support import builders, digit_png, running

from registry.errors import BadInput
from registry.loaders import fake
from registry.payload import ImageRequest, TextRequest
from registry.views import BatchStats

pytestmark = pytest.mark.anyio


async def test_concurrent_requests_become_one_call_and_keep_their_own_results(
    write_config,
) -> None:
    config = write_config(
        "models:\n"
        "  m: {loader: fake, batch: {max_size: 16, max_wait_ms: 200}, options: {gate: g}}\n"
    )
    async with running(config) as manager:
        texts = [f"text {i}" for i in range(6)]
        tasks = [asyncio.create_task(manager.predict("m", TextRequest(t))) for t in texts]
        tasks.append(asyncio.create_task(manager.predict("m", TextRequest(["u", "v"]))))
        fake.open_gate("g")
        results = await asyncio.gather(*tasks)
        alone = [await manager.predict("m", TextRequest(t)) for t in texts]
        assert results[:6] == alone  # each caller got the output of its own input
        assert results[6] == [
            await manager.predict("m", TextRequest("u")),
            await manager.predict("m", TextRequest("v")),
        ]
        # one batch of 8, then the lone requests
        assert manager.describe("m").batches == BatchStats(batches=1 + 6 + 2, inputs=8 + 6 + 2)


async def test_a_bad_input_fails_only_its_own_request(write_config) -> None:
    config = write_config(
        "models:\n"
        "  m: {loader: fake, batch: {max_size: 8, max_wait_ms: 200}, "
        "options: {gate: g, reject: poison}}\n"
    )
    async with running(config) as manager:
        inputs = ["a", "poison", "b", "c"]
        tasks = [asyncio.create_task(manager.predict("m", TextRequest(t))) for t in inputs]
        fake.open_gate("g")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], BadInput)
        assert "rejects the input 'poison'" in results[1].message
        assert [isinstance(r, dict) for r in results] == [True, False, True, True]


async def test_requests_with_different_parameters_are_not_mixed(write_config) -> None:
    config = write_config(
        "models:\n  m: {loader: fake, batch: {max_size: 8, max_wait_ms: 200}, options: {gate: g}}\n"
    )
    async with running(config) as manager:
        tasks = [
            asyncio.create_task(manager.predict("m", TextRequest("x", {"top_k": k})))
            for k in (1, 2, 1, 2)
        ]
        fake.open_gate("g")
        results = await asyncio.gather(*tasks)
        assert [r["parameters"] for r in results] == [{"top_k": k} for k in (1, 2, 1, 2)]
        assert manager.describe("m").batches == BatchStats(batches=2, inputs=4)


async def test_batching_does_not_change_real_predictions(write_config, model_store) -> None:
    config = write_config(
        f"""
models:
  langid: {{task: text-classification, source: {model_store}/langid-bert}}
  langid-batched:
    task: text-classification
    source: {model_store}/langid-bert
    batch: {{max_size: 32, max_wait_ms: 50}}
  digits: {{task: image-classification, source: {model_store}/digits-resnet}}
  digits-batched:
    task: image-classification
    source: {model_store}/digits-resnet
    batch: {{max_size: 32, max_wait_ms: 50}}
"""
    )
    build = builders()
    languages = ["en", "de", "fr", "it", "es", "pl", "nl"]
    texts = [build.langid_sentence(languages[i % 7], 100 + i) for i in range(14)]
    start = build.DIGITS_HELDOUT_START
    images = [digit_png(index) for index in range(start, start + 12)]
    async with running(config) as manager:
        for plain, batched, requests in (
            ("langid", "langid-batched", [TextRequest(t, {"top_k": 3}) for t in texts]),
            ("digits", "digits-batched", [ImageRequest(data=png) for png in images]),
        ):
            alone = [await manager.predict(plain, r) for r in requests]
            together = await asyncio.gather(*(manager.predict(batched, r) for r in requests))
            stats = manager.describe(batched).batches
            assert stats is not None and stats.batches < len(requests)
            for one, grouped in zip(alone, together, strict=True):
                assert [p["label"] for p in one] == [p["label"] for p in grouped]
                for a, b in zip(one, grouped, strict=True):
                    assert a["score"] == pytest.approx(b["score"], abs=1e-5)


class _Uncomparable:
    """A model input whose comparison fails loudly (a decoded image compares every pixel)."""

    def __eq__(self, other: object) -> bool:
        raise AssertionError("the batcher compared two requests' inputs")

    __hash__ = object.__hash__


async def test_queued_requests_are_found_by_identity_not_by_comparing_inputs() -> None:
    """Taking a batch out of the queue, or withdrawing a request whose client went away,
    finds the request itself: no other request's inputs are compared with its own (for
    uploads that meant converting both decoded images to bytes, pixel by pixel)."""
    from registry.batching import Batcher

    calls: list[int] = []

    async def run(inputs: list[object], parameters: object) -> list[object]:
        calls.append(len(inputs))
        return list(inputs)

    batcher = Batcher(run, max_size=8, max_wait=0.05)
    # a and c share parameters: the batch takes c from behind b (other parameters)
    a = batcher.submit([_Uncomparable()], {"p": 1})
    b = batcher.submit([_Uncomparable()], {"p": 2})
    c = batcher.submit([_Uncomparable()], {"p": 1})
    d = batcher.submit([_Uncomparable()], {"p": 2})
    assert batcher.withdraw(d)  # behind a, b and c
    done = await asyncio.wait_for(asyncio.gather(a, b, c), 30)
    assert [len(outputs) for outputs in done] == [1, 1, 1]
    assert sorted(calls) == [1, 2]  # a and c together, b alone
