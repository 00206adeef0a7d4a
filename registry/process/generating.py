"""Text generation in a worker process: the parent's side of a generation model's streams.

A `ProcessGenerator` is a `ProcessModel` with the generation interface registry/streaming.py
calls on a thread model (`start(request) -> Generation`, `step_many(sessions)`), each call a
pipe round trip on the model's thread:

    parent -> worker   ("start", id, request)   the worker's model starts the generation and
                                                runs its first step (the prompt's forward pass)
                       ("step", [id, ...])      one step of each of these generations, in one
                                                `step_many` call (one batched forward pass)
                       ("drop", [id, ...])      the generations ended: drop their caches (no
                                                reply; sent from any thread)
    worker -> parent   ("ok", (prompt_tokens, limit, stop, first token), memory) for a start,
                       ("ok", [token, ...], memory) for a step, or ("raise", exception)

The worker runs the model's sessions only; the parent's `Generation` applies max_tokens and
stop strings to the tokens that come back, as for a thread model, so a stream that stops
(a client gone, a timeout, the drain's end) asks the worker for no further step. A worker
that dies mid-step raises WorkerDied in that step's streams; a step past predict_timeout
kills the worker (InferenceTimeout), as a predict call does.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

from registry.generation import GenerateRequest, Generation, Session, Token
from registry.process import wire
from registry.process.proxy import ProcessModel


class ProcessGenerator(ProcessModel):
    """A process model whose worker generates text, one round trip per step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ids = itertools.count(1)

    def start(self, request: GenerateRequest) -> Generation:
        """Start a generation in the worker; its first token comes back with it."""
        gid = next(self._ids)
        prompt_tokens, limit, stop, first = self._ask(("start", gid, request))
        session = RemoteSession(self, gid, int(prompt_tokens), first)
        return Generation(session, int(limit), tuple(stop))

    def step_many(self, sessions: list[Session]) -> list[Token]:
        """One step of each session: those with a token waiting take it, the others are
        stepped together in the worker (one round trip)."""
        out: list[Token | None] = []
        ask: list[RemoteSession] = []
        for session in sessions:
            assert isinstance(session, RemoteSession)
            token = session.take_first()
            out.append(token)
            if token is None:
                ask.append(session)
        if ask:
            tokens = iter(self._ask(("step", [s.gid for s in ask])))
            out = [token if token is not None else next(tokens) for token in out]
        return [token for token in out if token is not None]

    def drop(self, gid: int) -> None:
        """Tell the worker a generation ended (no reply; a gone worker needs no telling)."""
        if not self.alive:
            return
        with contextlib.suppress(OSError, EOFError, ValueError), self._sending:
            wire.send(self._conn, ("drop", [gid]))

    def _ask(self, message: tuple[Any, ...]) -> Any:
        with self._call:
            reply = self._round_trip(message)
        if reply[0] == "raise":
            raise reply[1]
        _, outputs, memory = reply
        if memory:
            self.memory = memory
        return outputs


class RemoteSession:
    """A `Session` whose cache lives in the worker: each step a round trip."""

    def __init__(self, model: ProcessGenerator, gid: int, prompt_tokens: int, first: Token) -> None:
        self.model = model
        self.gid = gid
        self.prompt_tokens = prompt_tokens
        self._first: Token | None = first  # the worker ran the first step with the start
        self._open = True

    def take_first(self) -> Token | None:
        """The first step's token, once (the worker computed it with the start)."""
        token, self._first = self._first, None
        return token

    def step(self) -> Token:
        """One step (on the model's thread)."""
        return self.model.step_many([self])[0]

    def close(self) -> None:
        """The generation ended: the worker drops its cache (once)."""
        if self._open:
            self._open = False
            self.model.drop(self.gid)
