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

`Streams.predict` is native predict on a generation model: each prompt one such generation,
run to its end. Every generation's tokens and time to first token are counted here, so the
OpenAI routes and native predict count alike. A process model (registry/process/generating.py)
is the same to this code: its start and steps are pipe round trips; a worker that dies or
is killed under a step fails the model as under a predict.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from registry.admission import check_input_kind
from registry.errors import (
    BadInput,
    GenerationTimeout,
    InferenceTimeout,
    ModelFailed,
    RegistryError,
    WorkerDied,
)
from registry.fault import model_error
from registry.generation import (
    Chunk,
    GenerateRequest,
    Generation,
    advance_all,
    is_generator,
    step_each,
)
from registry.payload import PredictRequest, TextRequest

if TYPE_CHECKING:
    from registry.admission import Admission
    from registry.config.schema import ModelSpec
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
        arrived = time.monotonic()
        slot, hit = await self._admission.hold(name)
        meter = _Meter(time.monotonic())
        outcome = "ok"
        try:
            async with contextlib.aclosing(self._generate(slot, request, meter)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except RegistryError as exc:
            outcome = exc.kind
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "internal"
            raise
        finally:
            if not meter.entered:  # closed before its first step: the lease is still ours
                self._admission.release(slot)
            self._record(slot.name, outcome, arrived, meter.started, hit)

    async def predict(self, name: str, spec: ModelSpec, request: PredictRequest) -> Any:
        """Native predict on a generation model: the generated text of each prompt.

        Each prompt is a generation as a stream's (its own lease, token by token in the
        model's turn with its streams, the same timeout, drain and metrics); a list of
        prompts runs at once (their steps batched), and the first failure ends the others.
        """
        if not isinstance(request, TextRequest):
            check_input_kind(name, spec, upload=True)  # UnsupportedInput: not an image model
            raise BadInput(f"model {name!r} takes text")
        prompts = request.inputs if isinstance(request.inputs, list) else [request.inputs]
        if not prompts:
            raise BadInput("'inputs' is an empty list; send at least one input")
        limit = self._life.settings.max_inputs
        if len(prompts) > limit:
            raise BadInput(f"'inputs' has {len(prompts)} items; at most {limit} per request")
        if not all(isinstance(prompt, str) for prompt in prompts):
            raise BadInput(
                f'model {name!r} ({spec.task}) takes text: "inputs" must be a string '
                "or a list of strings"
            )
        requests = [GenerateRequest.from_parameters(p, request.parameters) for p in prompts]
        arrived = started = time.monotonic()
        hit: bool | None = None
        outcome = "ok"
        try:
            slot, hit = await self._admission.hold(name)
            started = time.monotonic()
            for _ in requests[1:]:
                slot.lease()  # one lease per generation; the hold's is the first one's
            tasks = [self._text(slot, one, started) for one in requests]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in tasks:
                    task.cancel()  # the others, after a failure (or this request's cancel)
            for task in tasks:
                if task.done() and not task.cancelled() and (error := task.exception()):
                    if isinstance(error, RegistryError):
                        raise error
                    raise model_error(name, error, request.parameters) from error
            texts = [task.result() for task in tasks]
            return texts if request.is_batch else texts[0]
        except RegistryError as exc:
            outcome = exc.kind
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except BaseException:
            outcome = "internal"
            raise
        finally:
            self._record(name, outcome, arrived, started, hit)

    def _text(self, slot: Slot, request: GenerateRequest, started: float) -> asyncio.Task[str]:
        """One native prompt's generation, to its end; it owns one lease on `slot`."""
        meter = _Meter(started)

        async def run() -> str:
            parts: list[str] = []
            async with contextlib.aclosing(self._generate(slot, request, meter)) as chunks:
                async for chunk in chunks:
                    parts.append(chunk.text)
            return "".join(parts)

        task = asyncio.ensure_future(run())

        def unstarted(done: asyncio.Task[str]) -> None:
            if not done.cancelled():
                done.exception()  # read: a prompt ended after its request's failure
            if not meter.entered:  # cancelled before it ran: its lease is given back here
                self._admission.release(slot)

        task.add_done_callback(unstarted)
        return task

    def _record(
        self, name: str, outcome: str, arrived: float, started: float, hit: bool | None
    ) -> None:
        self._life.stats.request(
            name,
            outcome,
            load_wait=started - arrived,
            queue=0.0,
            inference=time.monotonic() - started,
            hit=hit,
        )

    async def _generate(
        self, slot: Slot, request: GenerateRequest, meter: _Meter
    ) -> AsyncGenerator[Chunk, None]:
        """One generation's chunks; it owns a lease on `slot`, given back once no step of it
        runs. Its tokens and first token are counted here, for every front end alike."""
        meter.entered = True
        life = self._life
        running: asyncio.Future[Any] | None = None
        generation: Generation | None = None
        try:
            model = slot.model
            if not is_generator(model):
                raise BadInput(
                    f"model {slot.name!r} ({slot.spec.task or 'custom loader'}) does not "
                    "generate text; use a text-generation model"
                )
            timeout = slot.spec.predict_timeout or life.settings.predict_timeout
            deadline = meter.started + timeout
            start: Callable[[GenerateRequest], Generation] = model.start  # type: ignore[union-attr]
            begun = self._call(slot, functools.partial(_begin, start), request, timeout)
            running = begun
            generation, chunk = await life.drain.answer(begun)  # the prompt and its first token
            current = generation
            running = None
            meter.first_token = time.monotonic() - meter.started
            meter.tokens = chunk.completion_tokens
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
                meter.tokens = chunk.completion_tokens
                yield chunk
                if chunk.finish_reason is not None:
                    break
                chunk = None
        except (WorkerDied, InferenceTimeout) as exc:
            life.worker_lost(slot, exc)  # a process model's worker died or was killed
            raise
        except RegistryError:
            raise
        except (ValueError, TypeError) as exc:
            raise BadInput(f"model {slot.name!r} cannot generate from this: {exc}") from exc
        finally:
            self._end(slot, running, generation)
            life.stats.generated(slot.name, meter.tokens, meter.first_token)

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


@dataclass
class _Meter:
    """What one generation counts: when it got its model, its first token, its tokens."""

    started: float
    entered: bool = False  # its steps began (from then on, they give its lease back)
    first_token: float | None = None
    tokens: int = 0


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
