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
prompt is tokenized, so a bad request has failed before), with the prompt's token count.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from registry.errors import BadInput, GenerationTimeout, RegistryError
from registry.generation import Chunk, GenerateRequest, Generation, is_generator

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

    async def stream(self, name: str, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        """The chunks of one generation on model `name` (see the module docstring)."""
        life = self._life
        arrived = time.monotonic()
        slot = await self._admission.hold(name)
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
            begun = self._call(slot, start, request, timeout)
            running = begun
            generation = current = await life.drain.answer(begun)
            running = None
            yield Chunk("", None, current.prompt_tokens, 0)
            while True:
                if life.drain.over:
                    raise life.drain.refuse()
                if time.monotonic() > deadline:
                    raise GenerationTimeout(slot.name, timeout, current.tokens)
                step = self._call(slot, current.advance, None, timeout)
                running = step
                chunk = await life.drain.answer(step)
                running = None
                if first_token is None:
                    first_token = time.monotonic() - started
                tokens = chunk.completion_tokens
                yield chunk
                if chunk.finish_reason is not None:
                    break
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
                hit=True,
            )
            life.stats.generated(slot.name, tokens, first_token)

    def _call(self, slot: Slot, fn: Callable[..., T], arg: Any, timeout: float) -> asyncio.Task[T]:
        """`fn(arg)` (or `fn()`) on the model's thread; a call stuck past `timeout` fails it."""
        life = self._life
        model = slot.model
        assert model is not None
        args = () if arg is None else (arg,)
        return life.pool.submit(
            fn,
            *args,
            thread=slot.thread,
            timeout=timeout,
            on_stuck=functools.partial(life.health.stuck, slot, model, slot.thread, timeout),
        )

    def _end(
        self, slot: Slot, running: asyncio.Future[Any] | None, generation: Generation | None
    ) -> None:
        """Drop the generation and the lease once no step of it runs any more."""

        def finish(_: object = None) -> None:
            if generation is not None and generation.finish_reason is None:
                generation.close()
            self._admission.release(slot)

        if running is None or running.done() or self._life.pool.cancel_queued(running):
            finish()
        else:
            running.add_done_callback(finish)  # one step is running: at most one more token
