"""The fake loader's text-generation model (`loader: fake` with `task: text-generation`).

Each step yields the next word of " w0 w1 w2 ..." after `token_seconds` (default 0), for
ever unless `max_tokens` (its ceiling, the entry's `max_tokens`, or the request's) or a stop
string ends it; `words: N` ends with the end-of-sequence after N words. For timing and
fault tests of streams: disconnects, predict_timeout, drains, batched steps (`step_many`
takes one token time for the whole batch, and `batches(name)` records its sizes).

Worker-process faults (for `isolation: process`): `crash_after: N` dies (by `crash`, default
SIGKILL; see registry/loaders/fake.py) at the step after N words; `hang_after: N` blocks for
ever there (a step stuck past predict_timeout).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from registry.config.schema import DEFAULT_MAX_TOKENS
from registry.generation import GenerateRequest, Generation, Token, run_to_end
from registry.units import parse_size

_steps: Counter[str] = Counter()
_batches: dict[str, list[int]] = {}
_lock = threading.Lock()


def steps(name: str) -> int:
    """How many decoding steps fake generators named `name` have run."""
    with _lock:
        return _steps[name]


def batches(name: str) -> list[int]:
    """The sizes of the step_many calls (batched steps) of fake generators named `name`."""
    with _lock:
        return list(_batches.get(name, []))


def reset() -> None:
    """Forget the step counts (between tests)."""
    with _lock:
        _steps.clear()
        _batches.clear()


class FakeGenerator:
    """Words " w0 w1 ...", one per step."""

    def __init__(
        self,
        name: str,
        options: Mapping[str, Any],
        ceiling: int | None,
        die: Callable[[str], object] | None = None,
    ) -> None:
        self.name = name
        self.die = die or _cannot_die  # registry/loaders/fake.py's crash (`crash_after`)
        self.size_bytes = parse_size(options.get("size", 1000))  # as fake.fake_size
        self.token_seconds = float(options.get("token_seconds", 0.0))
        words = options.get("words")
        self.words = int(words) if words is not None else None
        self.ceiling = ceiling or DEFAULT_MAX_TOKENS
        self.crash = str(options.get("crash", "SIGKILL"))
        self.crash_after = _count(options.get("crash_after"))
        self.hang_after = _count(options.get("hang_after"))

    def start(self, request: GenerateRequest) -> Generation:
        """A generation of words; the prompt's token count is its word count."""
        if request.messages is not None:
            text = " ".join(str(m.get("content", "")) for m in request.messages)
        else:
            text = request.prompt or ""
        session = _FakeSession(self, max(1, len(text.split())))
        limit = min(request.max_tokens or self.ceiling, self.ceiling)
        return Generation(session, limit, request.stop)

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """The generated text of each prompt."""
        base = GenerateRequest.from_parameters("", parameters)
        return [run_to_end(self.start(replace(base, prompt=str(text))))[0] for text in inputs]

    def step_many(self, sessions: list[_FakeSession]) -> list[Token]:
        """One step of each session (one token time for all: a batch), recorded."""
        with _lock:
            _batches.setdefault(self.name, []).append(len(sessions))
        tokens = [session.step(sleep=False) for session in sessions]
        if self.token_seconds:
            time.sleep(self.token_seconds)
        return tokens

    def close(self) -> None:
        """Nothing to drop."""


class _FakeSession:
    def __init__(self, model: FakeGenerator, prompt_tokens: int) -> None:
        self._model = model
        self.prompt_tokens = prompt_tokens
        self._next = 0

    def step(self, *, sleep: bool = True) -> Token:
        model = self._model
        with _lock:
            _steps[model.name] += 1
        if model.token_seconds and sleep:
            time.sleep(model.token_seconds)
        if model.crash_after is not None and self._next >= model.crash_after:
            model.die(model.crash)
        if model.hang_after is not None and self._next >= model.hang_after:
            threading.Event().wait()
        if model.words is not None and self._next >= model.words:
            return Token("", "stop")
        word = f" w{self._next}"
        self._next += 1
        return Token(word)

    def close(self) -> None:
        pass


def _count(value: Any) -> int | None:
    return int(value) if value is not None else None


def _cannot_die(how: str) -> None:
    raise RuntimeError(f"crash_after ({how}) needs the fake loader's crash function")
