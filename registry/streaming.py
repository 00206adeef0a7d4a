"""Generation streams: one request's tokens, each one a call on the model's thread, under a lease.

`Streams.stream(name, request)` is an async iterator of `Chunk`s:
- it takes a lease on the model (loading it first, as a predict does) and holds it until
  its last token, so the model is never evicted or unloaded mid-stream;
- every decoding step is one call on the model's thread (`InferencePool.submit`), so
  concurrent streams on one model take turns token by token (the thread's FIFO turn) and
  none blocks the others for its whole length; a single step stuck past `predict_timeout`
  marks the model failed, as a stuck predict does;
- a consumer that stops iterating (a client that disconnected: the iterator is cancelled or
  closed) runs no further step: at most the step already running finishes;
- a stream past `predict_timeout` in all raises GenerationTimeout between two tokens;
- at shutdown a stream runs while the drain lasts; when it ends, the stream raises
  ShuttingDown (the HTTP layer turns either into a final error event).
The first chunk is empty (no text, no finish): it says the generation has started (the
prompt is tokenized and its first token computed, in one call, so a bad request has failed
before), with the prompt's token count.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from registry.errors import BadInput, GenerationTimeout, ModelFailed, RegistryError
from registry.generation import (
    Chunk,
    GenerateRequest,
    Generation,
    advance_all,
    is_generator,
    step_each,
)

if TYPE_CHECKING:
    from registry.admission import Admission
    from registry.lifecycle import Lifecycle
    from registry.slot import Slot

T = TypeVar("T")


class Streams:
    """Runs generation streams on the roster's models (through the admission's leases)."""

    def __init__(self, admission: Admission, life: Lifecycle) -> None:
        self._admission = admission
        self._life = life
        self._stepping: dict[int, _Steps] = {}  # by id(slot), while its streams step

    def _steps(self, slot: Slot) -> _Steps:
        steps = self._stepping.get(id(slot))
        if steps is None:
            steps = self._stepping[id(slot)] = _Steps(
                functools.partial(self._run_steps, slot),
                lambda: self._stepping.pop(id(slot), None),
            )
        return steps

    def _run_steps(self, slot: Slot, generations: list[Generation]) -> asyncio.Task[list[Chunk]]:
        """One step of each generation, in one call on the model's thread."""
        timeout = slot.spec.predict_timeout or self._life.settings.predict_timeout
        step_many = getattr(slot.model, "step_many", step_each)
        return self._call(slot, functools.partial(advance_all, generations), step_many, timeout)

    async def stream(self, name: str, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        """The chunks of one generation on model `name` (see the module docstring)."""
        life = self._life
        arrived = time.monotonic()
        slot, hit = await self._admission.hold(name)
        started = time.monotonic()
        outcome = "ok"
        running: asyncio.Future[Any] | None = None
        generation: Generation | None = None
        first_token: float | None = None
        tokens = 0
        try:
            model = slot.model
            if not is_generator(model):
                raise BadInput(
                    f"model {slot.name!r} ({slot.spec.task or 'custom loader'}) does not "
                    "generate text; use a text-generation model"
                )
            timeout = slot.spec.predict_timeout or life.settings.predict_timeout
            deadline = started + timeout
            start: Callable[[GenerateRequest], Generation] = model.start  # type: ignore[union-attr]
            begun = self._call(slot, functools.partial(_begin, start), request, timeout)
            running = begun
            generation, chunk = await life.drain.answer(begun)  # the prompt and its first token
            current = generation
            running = None
            first_token = time.monotonic() - started
            tokens = chunk.completion_tokens
            yield Chunk("", None, current.prompt_tokens, 0)
            while True:
                if chunk is None:
                    if life.drain.over:
                        raise life.drain.refuse()
                    if time.monotonic() > deadline:
                        raise GenerationTimeout(slot.name, timeout, current.tokens)
                    step = self._steps(slot).step(current)
                    running = step
                    chunk = await life.drain.answer(step)
                    running = None
                tokens = chunk.completion_tokens
                yield chunk
                if chunk.finish_reason is not None:
                    break
                chunk = None
        except RegistryError as exc:
            outcome = exc.kind
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        except Exception as exc:
            outcome = "internal"
            if isinstance(exc, ValueError | TypeError):
                outcome = "bad_input"
                raise BadInput(f"model {slot.name!r} cannot generate from this: {exc}") from exc
            raise
        finally:
            self._end(slot, running, generation)
            done = time.monotonic()
            life.stats.request(
                slot.name,
                outcome,
                load_wait=started - arrived,
                queue=0.0,
                inference=done - started,
                hit=hit,
            )
            life.stats.generated(slot.name, tokens, first_token)

    def _call(self, slot: Slot, fn: Callable[..., T], arg: Any, timeout: float) -> asyncio.Task[T]:
        """`fn(arg)` (or `fn()`) on the model's thread; a call stuck past `timeout` fails it."""
        life = self._life
        model = slot.model
        if model is None:  # marked failed (a stuck call) or unloaded since the lease
            raise ModelFailed(slot.name, slot.error or "it was unloaded", retry_after=1.0)
        args = () if arg is None else (arg,)
        return life.pool.submit(
            fn,
            *args,
            thread=slot.thread,
            timeout=timeout,
            on_stuck=functools.partial(life.mark_stuck, slot, model, slot.thread, timeout),
        )

    def _end(
        self, slot: Slot, running: asyncio.Future[Any] | None, generation: Generation | None
    ) -> None:
        """Drop the generation and the lease once no step of it runs any more."""

        def finish(_: object = None) -> None:
            if generation is not None:
                if generation.finish_reason is None:
                    generation.close()
                steps = self._stepping.get(id(slot))
                if steps is not None:
                    steps.leave(generation)
            self._admission.release(slot)

        steps = self._stepping.get(id(slot))
        if running is None or running.done() or (steps is not None and steps.withdraw(running)):
            finish()
        elif isinstance(running, asyncio.Task) and self._life.pool.cancel_queued(running):
            finish()  # the start call had not reached the model's thread
        else:
            running.add_done_callback(finish)  # a call runs with it: at most one more token


def _begin(start: Callable[[GenerateRequest], Generation], request: GenerateRequest) -> Any:
    """On the model's thread: the generation and its first step (the prompt's forward pass,
    never batched), in one call: the first token costs one thread hop, not two."""
    generation = start(request)
    return generation, generation.advance()


GATHER_SECONDS = 0.002  # after a call, how long the next waits for the streams of the last


class _Steps:
    """The decoding steps one model's streams wait for, run together: each call advances
    every stream then waiting by one token (one batched forward pass where the model has
    `step_many`). After a call, the next one starts once every stream of the last call
    that goes on has asked again (each needs a few loop turns to pass its token on), or
    GATHER_SECONDS later: a slow reader delays the others by at most that, per token."""

    def __init__(
        self,
        run: Callable[[list[Generation]], asyncio.Task[list[Chunk]]],
        idle: Callable[[], object],
    ) -> None:
        self._run = run
        self._idle = idle
        self._waiting: list[tuple[Generation, asyncio.Future[Chunk]]] = []
        self._expected: set[int] = set()  # ids of the last call's generations that go on
        self._running = False
        self._timer: asyncio.TimerHandle | None = None

    def step(self, generation: Generation) -> asyncio.Future[Chunk]:
        """The next chunk of `generation`, from the next call."""
        future: asyncio.Future[Chunk] = asyncio.get_running_loop().create_future()
        self._waiting.append((generation, future))
        self._maybe_next()
        return future

    def withdraw(self, future: asyncio.Future[Any]) -> bool:
        """Drop a step that no call has taken yet (its stream ended); True if it was so."""
        for index, (_, waiting) in enumerate(self._waiting):
            if waiting is future:
                del self._waiting[index]
                future.cancel()
                return True
        return False

    def leave(self, generation: Generation) -> None:
        """A stream ended: the next call does not wait for it."""
        self._expected.discard(id(generation))
        self._maybe_next()

    def _maybe_next(self) -> None:
        if self._running:
            return
        asked = {id(generation) for generation, _ in self._waiting}
        if self._expected <= asked:
            self._next()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(GATHER_SECONDS, self._next)

    def _next(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting, []
        self._expected = set()
        if not batch:
            self._running = False
            self._idle()
            return
        self._running = True
        try:
            job = self._run([generation for generation, _ in batch])
        except Exception as exc:  # the model is gone (failed, unloaded): its streams end
            self._running = False
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            self._idle()
            return
        job.add_done_callback(functools.partial(self._done, batch))

    def _done(
        self, batch: list[tuple[Generation, asyncio.Future[Chunk]]], job: asyncio.Task[list[Chunk]]
    ) -> None:
        for index, (generation, future) in enumerate(batch):
            if future.done():
                continue
            if job.cancelled():
                future.cancel()
            elif (error := job.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(job.result()[index])
                if generation.finish_reason is None:
                    self._expected.add(id(generation))
        self._running = False
        if self._waiting or self._expected:
            self._maybe_next()
        else:
            self._idle()
