"""OpenAI-compatible embeddings: POST /v1/embeddings (GET /v1/models, which lists the
embedding models with the generation models, is app/openai/generation.py's).

A thin adapter over the same `manager.predict` call as the native predict route. Serves
every model whose task produces embeddings; `usage` counts tokens with the model's own
tokenizer (`count_tokens`), or whitespace-separated words for a model without one.
Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app import json_body
from app.http.routes import Manager
from app.openai.errors import RequestError, Route
from registry.config.schema import ModelSpec
from registry.errors import InferenceError
from registry.payload import TextRequest

if TYPE_CHECKING:
    import numpy as np

EMBEDDING_TASKS = frozenset({"sentence-embeddings", "feature-extraction"})
FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
OWNER = "model-registry"


router = APIRouter(prefix="/v1", route_class=Route, tags=["OpenAI"])


def _embedding_names(manager: Manager) -> list[str]:
    return [n for n in manager.names() if manager.spec(n).task in EMBEDDING_TASKS]


def _embedding_spec(manager: Manager, name: str) -> ModelSpec:
    spec = manager.spec(name)  # UnknownModel: 404 model_not_found
    if spec.task not in EMBEDDING_TASKS:
        served = ", ".join(_embedding_names(manager)) or "(none)"
        raise RequestError(
            f"model {name!r} ({spec.task or 'custom loader'}) does not make embeddings; "
            f"embedding models: {served}",
            "model",
        )
    return spec


@router.post("/embeddings")
async def embeddings(request: Request, manager: Manager) -> Response:
    """Embed `input` (a string or a list of strings) with `model`."""
    body = _body(await request.body())
    name = body["model"]
    texts = _texts(body["input"])
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError(
            f"encoding_format {encoding!r} is not supported; use 'float' or 'base64'",
            "encoding_format",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise RequestError("'dimensions' must be a positive integer", "dimensions")
    import numpy as np  # here, not at startup: only this route needs it

    spec = _embedding_spec(manager, name)
    predictions = await manager.predict(name, TextRequest(inputs=texts))
    try:
        if spec.task == "sentence-embeddings":
            vectors = np.asarray(predictions, dtype="<f4")
            counts = await manager.count_tokens(name, texts)
        else:  # feature-extraction: one vector per token; mean-pool them as the embedding
            tokens = [np.asarray(p, dtype="<f4").reshape(-1, np.shape(p)[-1]) for p in predictions]
            vectors = np.stack([t.mean(axis=0) for t in tokens])
            counts = [len(t) for t in tokens]
    except (ValueError, TypeError, IndexError):
        vectors = np.empty(0)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise InferenceError(f"model {name!r} did not return one vector of numbers per input")
    if counts is None:
        counts = [len(text.split()) for text in texts]
    size = int(vectors.shape[1])
    if dimensions is not None and dimensions != size:
        raise RequestError(
            f"model {name!r} makes {size}-dimensional embeddings and cannot shorten them; "
            f"omit 'dimensions' (or send {size})",
            "dimensions",
        )
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(vector, encoding)}
        for i, vector in enumerate(vectors)
    ]
    total = int(sum(counts))
    usage = {"prompt_tokens": total, "total_tokens": total}
    return JSONResponse({"object": "list", "data": data, "model": name, "usage": usage})


def _encode(vector: np.ndarray[Any, Any], encoding: str) -> Any:
    if encoding == "base64":  # little-endian float32, as the openai client decodes it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = json_body.parse(raw, "the body") if raw.strip() else None
    except json_body.MalformedJSON as exc:
        raise RequestError(exc.message, None) from None
    if not isinstance(body, dict):
        raise RequestError('send a JSON object: {"model": "...", "input": "text" | [...]}', None)
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise RequestError(f"unrecognized request argument(s) supplied: {unknown}", unknown[0])
    for key in ("model", "input"):
        if key not in body:
            raise RequestError(f"you must provide '{key}'", key)
    if not isinstance(body["model"], str):
        raise RequestError("'model' must be a string", "model")
    return body


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
        raise RequestError("token arrays are not supported; send the text itself", "input")
    raise RequestError("'input' must be a string or a non-empty list of strings", "input")
