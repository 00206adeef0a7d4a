"""Refuse request bodies over the upload limit without reading them into memory."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import HTTPError, error_bytes
from registry.units import format_bytes


class BodyTooLarge(HTTPError):
    """The body grew past the limit while it was being read: a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", too_large_message(limit))
        self.limit = limit


def too_large_message(limit: int) -> str:
    """The 413 message."""
    return (
        f"the request body is larger than the {format_bytes(limit)} limit "
        "(server.max_upload_size); send a smaller file"
    )


class BodyLimit:
    """ASGI middleware: 413 from Content-Length at once, or as soon as a stream passes it."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        length = _content_length(scope)
        if length is not None and length > limit:
            await _reject(send, limit)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(send: Send, limit: int) -> None:
    body = error_bytes("too_large", too_large_message(limit))
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
