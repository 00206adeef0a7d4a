"""Text generation: what a request asks for, what a step gives back, stop strings and limits.

A generation model (`task: text-generation`) is a `Model` with one more method,
`start(request) -> Generation`, called on the model's thread. A `Generation` holds one
request's state (its KV cache, its sampler); each `advance()` runs one decoding step and
returns a `Chunk` of new text. The core calls `advance()` one token at a time on the
model's thread (registry/streaming.py), so that concurrent streams on one model take turns
per token; native predict runs each prompt as such a stream, to its end. A model's own
`predict` (`run_to_end` of each prompt) serves direct callers.

`Generation` applies what is the same for every model: `max_tokens` (capped by the model's
ceiling), stop strings (text that could begin one is held back until it cannot), and the
token counts for `usage`. A model provides a `Session`: tokens in, one token's text out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from registry.errors import BadInput

MAX_STOP = 4  # stop strings per request (OpenAI's limit)
PARAMETERS = frozenset({"max_tokens", "temperature", "top_p", "stop", "seed"})


@dataclass(frozen=True)
class GenerateRequest:
    """One generation: a prompt (completions) or chat messages, and the sampling knobs."""

    prompt: str | None = None
    messages: tuple[Mapping[str, str], ...] | None = None
    max_tokens: int | None = None  # None: the model's ceiling
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def from_parameters(cls, prompt: str, parameters: Mapping[str, Any]) -> GenerateRequest:
        """A native predict call's `parameters` (BadInput naming what is wrong)."""
        unknown = sorted(set(parameters) - PARAMETERS)
        if unknown:
            raise BadInput(
                f"unknown parameters {unknown}; a text-generation model takes "
                f"{', '.join(sorted(PARAMETERS))}"
            )
        return cls(
            prompt=prompt,
            max_tokens=check_max_tokens(parameters.get("max_tokens")),
            temperature=check_number("temperature", parameters.get("temperature"), 1.0, 0, 2),
            top_p=check_number("top_p", parameters.get("top_p"), 1.0, 0, 1, low_open=True),
            stop=check_stop(parameters.get("stop")),
            seed=check_seed(parameters.get("seed")),
        )


def check_max_tokens(value: Any) -> int | None:
    """None, or a positive integer."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadInput(f"'max_tokens' must be a positive integer, not {value!r}")
    return value


def check_number(
    name: str, value: Any, default: float, low: float, high: float, *, low_open: bool = False
) -> float:
    """None (the default), or a number in [low, high] ((low, high] with `low_open`)."""
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadInput(f"'{name}' must be a number, not {value!r}")
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise BadInput(f"'{name}' must be in {bracket}{low:g}, {high:g}], not {value!r}")
    return float(value)


def check_stop(value: Any) -> tuple[str, ...]:
    """None, a string, or a list of at most MAX_STOP non-empty strings."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise BadInput(f"'stop' must be a non-empty string or a list of up to {MAX_STOP} of them")
    return tuple(stops)


def check_seed(value: Any) -> int | None:
    """None, or an integer."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInput(f"'seed' must be an integer, not {value!r}")
    return value


@dataclass(frozen=True)
class Token:
    """What one decoding step of a session gives: the text it adds, or the end."""

    text: str  # may be '' (a character split over tokens, or the end)
    end: str | None = None  # "stop": the model's end-of-sequence; "length": context full


class Session(Protocol):
    """A model's side of one generation: its prompt, and one decoding step per call."""

    prompt_tokens: int

    def step(self) -> Token:
        """Run one decoding step (on the model's thread)."""
        ...

    def close(self) -> None:
        """Drop the session's cache."""
        ...


@dataclass(frozen=True)
class Chunk:
    """What a stream yields: new text, and once, why it finished."""

    text: str
    finish_reason: str | None  # None, "stop" or "length"
    prompt_tokens: int
    completion_tokens: int  # generated so far


@dataclass
class Generation:
    """One request's generation: a session's tokens under max_tokens and stop strings."""

    session: Session
    limit: int  # tokens it may generate (request, ceiling and context, the least)
    stop: tuple[str, ...] = ()
    tokens: int = 0
    finish_reason: str | None = None
    _held: str = field(default="", repr=False)

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt (after the chat template)."""
        return self.session.prompt_tokens

    def advance(self) -> Chunk:
        """One decoding step: the text that is certain now (called on the model's thread)."""
        return self.due() or self.accept(self.session.step())

    def due(self) -> Chunk | None:
        """The last chunk if the generation is over without another step (at its limit)."""
        if self.finish_reason is not None:
            raise RuntimeError("the generation has finished")
        if self.tokens >= self.limit:
            return self._finish("", "length")
        return None

    def accept(self, token: Token) -> Chunk:
        """What one step's token makes of the text: max_tokens, stop strings, the end."""
        if token.end is not None:
            return self._finish(token.text, token.end)
        self.tokens += 1
        text = self._held + token.text
        first = min(((text.find(s), s) for s in self.stop if s in text), default=None)
        if first is not None:
            self._held = ""
            return self._finish(text[: first[0]], "stop", held=False)
        keep = _prefix_tail(text, self.stop)
        self._held = text[len(text) - keep :] if keep else ""
        emitted = text[: len(text) - keep]
        if self.tokens >= self.limit:
            return self._finish(emitted, "length")
        return Chunk(emitted, None, self.prompt_tokens, self.tokens)

    def _finish(self, text: str, reason: str, *, held: bool = True) -> Chunk:
        out = (self._held + text) if held else text
        self._held = ""
        self.finish_reason = reason
        self.session.close()
        return Chunk(out, reason, self.prompt_tokens, self.tokens)

    def close(self) -> None:
        """Drop the session (a stream that ended early)."""
        self.session.close()


def _prefix_tail(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of `text` that begins some stop string."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[len(text) - size :]):
                best = size
                break
    return best


def run_to_end(generation: Generation) -> tuple[str, Chunk]:
    """Every step of a generation, in the calling thread: its text, and its last chunk."""
    parts: list[str] = []
    while True:
        chunk = generation.advance()
        parts.append(chunk.text)
        if chunk.finish_reason is not None:
            return "".join(parts), chunk


StepMany = Callable[[list[Session]], list[Token]]


def step_each(sessions: list[Session]) -> list[Token]:
    """One step of each session, one after the other (a model without batched decoding)."""
    return [session.step() for session in sessions]


def advance_all(generations: Sequence[Generation], step_many: StepMany) -> list[Chunk]:
    """One step of every generation, their sessions stepped together by `step_many` (one
    batched forward pass where the model has one); on the model's thread."""
    out: list[Chunk | None] = [g.due() for g in generations]
    todo = [i for i, chunk in enumerate(out) if chunk is None]
    if todo:
        tokens = step_many([generations[i].session for i in todo])
        for i, token in zip(todo, tokens, strict=True):
            out[i] = generations[i].accept(token)
    return [chunk for chunk in out if chunk is not None]


def is_generator(model: object) -> bool:
    """Whether a loaded model generates text (has `start(request) -> Generation`)."""
    return callable(getattr(model, "start", None))
