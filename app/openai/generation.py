"""OpenAI-compatible text generation: POST /v1/chat/completions and /v1/completions.

A thin adapter over `manager.stream` (registry/streaming.py): the request's lease, its
token-by-token steps, its timeout and its drain are the core's. `stream: true` answers
server-sent events in OpenAI's chunk format, ending with `data: [DONE]`; an error after the
first event (predict_timeout, shutdown) is a last `data: {"error": ...}` event, which the
openai client raises. Without `stream` the answer is one JSON body with `usage`. A client
that disconnects cancels its stream: no further token is generated.

This router also answers GET /v1/models (embedding and generation models alike); it is
included before app/openai/embeddings.py's, whose routes of the same paths it supersedes.
Errors are OpenAI's `{"error": {...}}`; a bad request is 400 naming the parameter.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app import json_body
from app.http.routes import Manager
from app.openai.embeddings import EMBEDDING_TASKS, OWNER
from app.openai.errors import RequestError, Route, error_event
from registry.config.schema import GENERATION_TASK
from registry.errors import BadInput
from registry.generation import (
    Chunk,
    GenerateRequest,
    check_max_tokens,
    check_number,
    check_seed,
    check_stop,
)

COMMON = frozenset(
    {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "stop", "seed"}
    | {"n", "user", "presence_penalty", "frequency_penalty"}
)
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens"}
COMPLETION_FIELDS = COMMON | {"prompt"}
log = logging.getLogger("app")
ROLES = frozenset({"system", "user", "assistant", "developer"})

router = APIRouter(prefix="/v1", route_class=Route, tags=["OpenAI"])


def _served(manager: Manager) -> list[str]:
    tasks = EMBEDDING_TASKS | {GENERATION_TASK}
    return [n for n in manager.names() if manager.spec(n).task in tasks]


def _model_entry(manager: Manager, name: str) -> dict[str, Any]:
    created = int(manager.config_loaded_at.timestamp())
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}


@router.get("/models")
async def list_models(manager: Manager) -> dict[str, Any]:
    """The models the /v1 endpoints serve: embeddings and text generation."""
    return {"object": "list", "data": [_model_entry(manager, n) for n in _served(manager)]}


@router.get("/models/{name}")
async def get_model(name: str, manager: Manager) -> dict[str, Any]:
    """One model the /v1 endpoints serve."""
    spec = manager.spec(name)  # UnknownModel: 404 model_not_found
    if spec.task not in EMBEDDING_TASKS | {GENERATION_TASK}:
        raise RequestError(f"model {name!r} is not served by the OpenAI API", "model")
    return _model_entry(manager, name)


@router.post("/chat/completions")
async def chat_completions(request: Request, manager: Manager) -> Response:
    """Chat: `messages` through the model's chat template; streamed with `stream: true`."""
    body = _body(await request.body(), CHAT_FIELDS, "messages")
    if body.get("max_completion_tokens") is not None:
        body.setdefault("max_tokens", body["max_completion_tokens"])
    generate = GenerateRequest(messages=_messages(body["messages"]), **_knobs(body))
    return await _answer(manager, body, generate, chat=True)


@router.post("/completions")
async def completions(request: Request, manager: Manager) -> Response:
    """Completion of `prompt` (one string); streamed with `stream: true`."""
    body = _body(await request.body(), COMPLETION_FIELDS, "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string (one prompt per request)", "prompt")
    return await _answer(manager, body, GenerateRequest(prompt=prompt, **_knobs(body)), chat=False)


async def _answer(
    manager: Manager, body: dict[str, Any], generate: GenerateRequest, *, chat: bool
) -> Response:
    name = body["model"]
    _check_model(manager, name)
    streamed = _flag(body, "stream")
    chunks = manager.stream(name, generate)
    try:
        first = await anext(chunks)  # the model's lease and the prompt: errors are HTTP errors
    except BadInput as exc:
        await chunks.aclose()
        if isinstance(exc, RequestError):
            raise
        raise RequestError(exc.message, "messages" if chat else "prompt") from exc
    except BaseException:
        await chunks.aclose()
        raise
    shape = _Shape(name, chat)
    if streamed:
        options = body.get("stream_options") or {}
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = _events(chunks, first, shape, usage)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    parts: list[str] = []
    last = first
    try:
        async for chunk in chunks:
            parts.append(chunk.text)
            last = chunk
    finally:
        await chunks.aclose()
    return JSONResponse(shape.whole("".join(parts), last))


def _check_model(manager: Manager, name: str) -> None:
    spec = manager.spec(name)  # UnknownModel: 404 model_not_found
    if spec.task != GENERATION_TASK:
        served = [n for n in manager.names() if manager.spec(n).task == GENERATION_TASK]
        raise RequestError(
            f"model {name!r} ({spec.task or 'custom loader'}) does not generate text; "
            f"text-generation models: {', '.join(served) or '(none)'}",
            "model",
        )


class _Shape:
    """OpenAI's JSON for one answer: its id, its chunks, its whole body."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(self, text: str, finish: str | None, *, role: bool = False) -> dict[str, Any]:
        """One streamed chunk."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if role else {}
            if text and not role:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, last: Chunk) -> dict[str, Any]:
        """The last chunk of a stream with `include_usage`: no choices, the usage."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": _usage(last)}

    def whole(self, text: str, last: Chunk) -> dict[str, Any]:
        """The body of an answer that is not streamed."""
        finish = last.finish_reason or "stop"
        if self.chat:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            head = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            head = self._head("text_completion")
        return {**head, "choices": [choice], "usage": _usage(last)}


def _usage(last: Chunk) -> dict[str, int]:
    prompt, completion = last.prompt_tokens, last.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


async def _events(
    chunks: AsyncGenerator[Chunk, None],
    first: Chunk,
    shape: _Shape,
    usage: bool,
) -> AsyncIterator[bytes]:
    """The SSE body: a chunk per token, the finish, [DONE]; an error ends it as an event."""
    last = first
    try:
        if shape.chat:
            yield _sse(shape.chunk("", None, role=True))
        try:
            async for chunk in chunks:
                last = chunk
                if chunk.text or chunk.finish_reason is not None:
                    yield _sse(shape.chunk(chunk.text, chunk.finish_reason))
        except Exception as exc:  # a timeout, the drain's end, a failed step
            yield _sse(error_event(exc))
        else:
            if usage:
                yield _sse(shape.usage_chunk(last))
        yield _sse("[DONE]")
    finally:
        await chunks.aclose()  # a client that went away: the stream stops here


def _body(raw: bytes, fields: frozenset[str], required: str) -> dict[str, Any]:
    try:
        body = json_body.parse(raw) if raw.strip() else None
    except json_body.MalformedJSON as exc:
        if "levels deep" in exc.message:
            raise RequestError(exc.message, None) from None
        body = None
    if not isinstance(body, dict):
        raise RequestError(f'send a JSON object: {{"model": "...", "{required}": ...}}', None)
    unknown = sorted(set(body) - fields)
    if unknown:
        raise RequestError(f"unrecognized request argument(s) supplied: {unknown}", unknown[0])
    for key in ("model", required):
        if key not in body:
            raise RequestError(f"you must provide '{key}'", key)
    if not isinstance(body["model"], str):
        raise RequestError("'model' must be a string", "model")
    n = body.get("n")
    if n is not None and n != 1:
        raise RequestError("only n = 1 is supported (one choice per request)", "n")
    for penalty in ("presence_penalty", "frequency_penalty"):
        if body.get(penalty) not in (None, 0, 0.0):
            raise RequestError(f"'{penalty}' is not supported (send 0 or leave it out)", penalty)
    return body


def _knobs(body: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields, checked (a 400 naming the field)."""
    checks: dict[str, Callable[[Any], Any]] = {
        "max_tokens": check_max_tokens,
        "temperature": lambda v: check_number("temperature", v, 1.0, 0, 2),
        "top_p": lambda v: check_number("top_p", v, 1.0, 0, 1, low_open=True),
        "stop": check_stop,
        "seed": check_seed,
    }
    knobs: dict[str, Any] = {}
    for key, check in checks.items():
        try:
            knobs[key] = check(body.get(key))
        except BadInput as exc:
            raise RequestError(exc.message, key) from exc
    return knobs


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false", key)
    return bool(value)


def _messages(value: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list of {role, content}", "messages")
    out: list[dict[str, str]] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(
                f"messages[{i}] must be an object with a role ({', '.join(sorted(ROLES))})",
                "messages",
            )
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                what = f"messages[{i}]: only text content parts are supported"
                raise RequestError(what, "messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string", "messages")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": content})
    return tuple(out)
