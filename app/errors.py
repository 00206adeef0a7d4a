"""How errors become answers: one body shape, one status table per protocol, the handlers.

A registry error carries a `kind`, never an HTTP status. Each protocol maps kinds to statuses
in one table: `STATUS` here for the native API, `app/v2/errors.py` and `app/openai/errors.py`
for the Open Inference Protocol and OpenAI. The native API answers every error with
`{"error": {"type": kind, "message": message, ...}}` (`error_body`; `error_bytes` for the
parts that write a response below the framework: the upload limit, the header limit, the Ray
gateway). The other protocols' routes render their own bodies (`shaped_route`) from a
protocol-neutral `Failure`, with their own table's statuses and the same Retry-After.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.visibility import is_admin, public, redact
from registry.errors import ConfigError, RegistryError, Unavailable, UnknownModel

log = logging.getLogger("app")

StatusTable = Mapping[str, int]
"""HTTP status by `RegistryError.kind`."""

# The native API's statuses. A kind not listed takes the status of the nearest parent class's
# kind (a new kind of Unavailable is a 503); a kind nothing matches is a 500.
STATUS: StatusTable = MappingProxyType(
    {
        "unknown_model": 404,
        "unsupported_input": 415,
        "bad_input": 422,
        "config_error": 422,
        "unavailable": 503,
        "model_too_large": 507,
        "inference_timeout": 504,
        "generation_timeout": 504,
        "worker_died": 502,  # the front is fine; its upstream (the worker) failed
        "inference_error": 500,
    }
)


def status_of(error: RegistryError | type[RegistryError], table: StatusTable = STATUS) -> int:
    """The status `table` gives the error's kind, else its nearest parent class's; else 500."""
    cls = error if isinstance(error, type) else type(error)
    kinds = [error.kind] + [vars(base)["kind"] for base in cls.__mro__ if "kind" in vars(base)]
    for kind in kinds:
        if kind in table:
            return table[kind]
    return 500


def error_body(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    """The native error shape: a type a program can switch on and a message that says what to
    do."""
    return {"error": {"type": kind, "message": message, **extra}}


def error_bytes(kind: str, message: str, **extra: Any) -> bytes:
    """The same, encoded, for responses written below the framework."""
    return json.dumps(error_body(kind, message, **extra)).encode()


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON error answer of the native API."""
    return JSONResponse(error_body(kind, message, **extra), status_code=status, headers=headers)


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


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


# The native API's handlers.


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
    return error_response(422, "bad_request", _problems(exc))


async def _client_went_away(request: Request, exc: Exception) -> JSONResponse:
    # Nobody reads this answer: the client closed the connection (nginx's 499).
    return error_response(499, "client_closed_request", "the client went away")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", f"internal error: {type(exc).__name__}")


def install(app: FastAPI) -> None:
    """Register the native API's handlers on `app`."""
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(HTTPError, _http_error)
    app.add_exception_handler(StarletteHTTPException, _starlette_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(ClientGone, _client_went_away)
    app.add_exception_handler(Exception, _unexpected)


def _problems(exc: RequestValidationError) -> str:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return problems or "invalid request"


# Other protocols' routes: errors in the protocol's own body.


@dataclass(frozen=True)
class Failure:
    """What went wrong, protocol-neutral."""

    status: int
    kind: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    param: str | None = None  # the request field at fault, where the error names one


Render = Callable[[Failure], Response]
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def failure_of(request: Request, exc: Exception, table: StatusTable) -> Failure | None:
    """The failure an exception stands for, with `table`'s status; None for one no handler
    knows (re-raised)."""
    if isinstance(exc, RegistryError):
        status = status_of(exc, table)
        headers = {}
        if isinstance(exc, Unavailable):
            headers["Retry-After"] = str(math.ceil(exc.retry_after))
        elif status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return Failure(status, exc.kind, exc.message, headers, getattr(exc, "param", None))
    if isinstance(exc, HTTPError):
        return Failure(exc.status, exc.kind, exc.message, exc.headers)
    if isinstance(exc, RequestValidationError):
        return Failure(422, "bad_request", _problems(exc))
    if isinstance(exc, StarletteHTTPException):
        headers = dict(exc.headers) if exc.headers else {}
        return Failure(exc.status_code, "http_error", str(exc.detail), headers)
    return None


def shaped_route(render: Render, table: StatusTable) -> type[APIRoute]:
    """An APIRoute class whose errors (dependencies' too) are rendered by `render`, with the
    statuses of `table`."""

    class ShapedRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:
                    failure = failure_of(request, exc, table)
                    if failure is None:
                        raise
                    return render(failure)

            return run

    return ShapedRoute
