"""The predict route served below the framework's router: the one route where it shows.

A profile of the server under load (docs/benchmarks.md, "Where a request's time goes") put
FastAPI's route matching, its endpoint wrapper (dependencies, parameters) and the exception
middleware at a quarter of the event loop's time per prediction. This ASGI middleware
answers `POST /models/{name}/predict` itself with the same function as the route
(`app.http.routes.predict`), and maps its exceptions with the app's own exception handlers, as
the exception middleware would; everything else, and anything unhandled (the 500 handler),
goes on as before. It sits inside the upload limit (app/http/body_limit.py), which it relies on.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.http import routes

# What the route's `{name}` matches (Starlette's str convertor: no slash).
PREDICT = re.compile(r"/models/([^/]+)/predict")
Handler = Callable[[Request, Exception], Any]


class PredictFastPath:
    """ASGI middleware: POST /models/{name}/predict without the router."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _predict_name(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = {"name": found}
        request = Request(scope, receive, send)
        try:
            response = await routes.predict(found, request)
        except Exception as exc:
            handler = _handler(scope["app"].exception_handlers, exc)
            if handler is None:
                raise  # the server-error middleware answers 500, as for any route
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)


def _predict_name(scope: Scope) -> str | None:
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    found = PREDICT.fullmatch(path)
    return found.group(1) if found else None


def _handler(handlers: dict[Any, Handler], exc: Exception) -> Handler | None:
    """The handler the exception middleware would pick (by class, most specific first)."""
    if isinstance(exc, HTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None  # the catch-all belongs to the server-error middleware
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None
