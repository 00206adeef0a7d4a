"""Errors in another protocol's shape: a route class that renders them itself.

The native handlers (app/errors.py) answer `{"error": {"type", "message"}}`; the Open
Inference Protocol wants `{"error": "..."}` and OpenAI `{"error": {"message", "type", ...}}`.
Routes of those protocols use `shaped_route(render)`: the same statuses and Retry-After as
the native API, in the protocol's own body.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import HTTPError, status_of
from registry.errors import RegistryError, Unavailable

log = logging.getLogger("app")


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


def failure_of(request: Request, exc: Exception) -> Failure | None:
    """The failure an exception stands for; None for one no handler knows (re-raised)."""
    if isinstance(exc, RegistryError):
        status = getattr(exc, "status", None) or status_of(exc)
        headers = {}
        if isinstance(exc, Unavailable):
            headers["Retry-After"] = str(math.ceil(exc.retry_after))
        elif status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return Failure(status, exc.kind, exc.message, headers, getattr(exc, "param", None))
    if isinstance(exc, HTTPError):
        return Failure(exc.status, exc.kind, exc.message, exc.headers)
    if isinstance(exc, RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return Failure(422, "bad_request", problems or "invalid request")
    if isinstance(exc, StarletteHTTPException):
        headers = dict(exc.headers) if exc.headers else {}
        return Failure(exc.status_code, "http_error", str(exc.detail), headers)
    return None


def shaped_route(render: Render) -> type[APIRoute]:
    """An APIRoute class whose errors (dependencies' too) are rendered by `render`."""

    class ShapedRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:
                    failure = failure_of(request, exc)
                    if failure is None:
                        raise
                    return render(failure)

            return run

    return ShapedRoute
