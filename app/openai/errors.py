"""OpenAI's errors: `{"error": {"message", "type", "param", "code"}}`, with its statuses.

The native API's statuses (app/errors.py), except a request OpenAI's API would refuse, which
is 400 naming the parameter at fault (a native BadInput is 422).
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse

from app import errors
from app.errors import Failure, StatusTable
from registry.errors import BadInput, RegistryError

log = logging.getLogger("app")


class RequestError(BadInput):
    """A request OpenAI's API would refuse (HTTP 400), naming the parameter at fault."""

    kind = "invalid_request_error"

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


STATUS: StatusTable = MappingProxyType({**errors.STATUS, RequestError.kind: 400})


def render(failure: Failure) -> Response:
    """OpenAI's error body."""
    kind = "invalid_request_error" if failure.status < 500 else "server_error"
    code = "model_not_found" if failure.kind == "unknown_model" else failure.kind
    error = {"message": failure.message, "type": kind, "param": failure.param, "code": code}
    return JSONResponse({"error": error}, status_code=failure.status, headers=failure.headers)


def error_event(exc: Exception) -> dict[str, Any]:
    """The last event of a stream that failed after it began."""
    if isinstance(exc, RegistryError):
        status = errors.status_of(exc, STATUS)
        kind, message = exc.kind, exc.message
    else:
        status, kind, message = 500, "internal", "the generation failed; see the server log"
    if status >= 500:
        log.error("a generation stream ended with an error: %s", message, exc_info=exc)
    category = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": category, "param": None, "code": kind}}


Route = errors.shaped_route(render, STATUS)
"""The route class of every /v1 route: its errors (dependencies' too) in OpenAI's shape."""
