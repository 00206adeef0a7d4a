"""The one place where registry errors become HTTP responses."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.limits import BodyTooLarge, too_large_message
from app.problem import error_body
from app.visibility import is_admin, public, redact
from registry.errors import (
    BadInput,
    ConfigError,
    GenerationTimeout,
    InferenceError,
    InferenceTimeout,
    ModelTooLarge,
    RegistryError,
    Unavailable,
    UnknownModel,
    UnsupportedInput,
    WorkerDied,
)

log = logging.getLogger("app")

# Most specific first: the first class an error is an instance of gives its status.
_STATUS: list[tuple[type[RegistryError], int]] = [
    (UnknownModel, 404),
    (UnsupportedInput, 415),
    (BadInput, 422),
    (ConfigError, 422),
    (Unavailable, 503),
    (ModelTooLarge, 507),
    (InferenceTimeout, 504),
    (GenerationTimeout, 504),
    (WorkerDied, 502),  # the front is fine; its upstream (the worker) failed
    (InferenceError, 500),
]


class HTTPError(Exception):
    """An error the adapter itself raises (auth, upload size), with its status."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON error shape of every non-2xx answer."""
    return JSONResponse(error_body(kind, message, **extra), status_code=status, headers=headers)


def status_of(exc: RegistryError) -> int:
    """HTTP status for a registry error."""
    return status_of_class(type(exc))


def status_of_class(error: type[RegistryError]) -> int:
    """HTTP status for a registry error class."""
    for cls, status in _STATUS:
        if issubclass(error, cls):
            return status
    return 500


async def _registry_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RegistryError)
    status = status_of(exc)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(math.ceil(exc.retry_after))
        extra["retry_after"] = math.ceil(exc.retry_after)
    if isinstance(exc, UnknownModel):
        extra["known"] = exc.known
    if isinstance(exc, ConfigError):
        extra["problems"] = exc.problems
    message = exc.message
    if status >= 500 and not isinstance(exc, Unavailable):
        log.error("%s %s: %s", request.method, request.url.path, message)
    if not is_admin(request):  # anonymous callers never see server paths
        message, extra = redact(message), public(extra)
        if message != exc.message and status < 500:
            log.info("%s %s -> %d: %s", request.method, request.url.path, status, exc.message)
    return error_response(status, exc.kind, message, headers, **extra)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up while sending its body: nobody reads an answer, nothing ran.
    log.info(
        "%s %s: the client disconnected before its body arrived", request.method, request.url.path
    )
    return Response(status_code=499)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPError)
    return error_response(exc.status, exc.kind, exc.message, exc.headers)


async def _starlette_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see GET /models and /docs"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, "http_error", message, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return error_response(422, "bad_request", problems or "invalid request")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def _client_went_away(request: Request, exc: Exception) -> JSONResponse:
    # Nobody reads this answer: the client closed the connection (nginx's 499).
    return error_response(499, "client_closed_request", "the client went away")


async def _body_too_large(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyTooLarge)
    return error_response(413, "too_large", too_large_message(exc.limit))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", f"internal error: {type(exc).__name__}")


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(HTTPError, _http_error)
    app.add_exception_handler(StarletteHTTPException, _starlette_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(BodyTooLarge, _body_too_large)
    app.add_exception_handler(ClientGone, _client_went_away)
    app.add_exception_handler(Exception, _unexpected)
