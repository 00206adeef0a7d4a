"""Limits on request heads (request line + headers), enforced by uvicorn's HTTP parser.

An ASGI middleware sees the headers only once the parser has buffered all of them, so a
20 MB header would already be in memory: the limit is checked as the bytes arrive.
"""

from __future__ import annotations

from typing import Any

from app.problem import error_bytes


def head_too_large(max_bytes: int, max_headers: int) -> bytes:
    """The whole 431 response, written straight to the socket."""
    message = (
        f"the request line and headers must be under {max_bytes} bytes and at most "
        f"{max_headers} header fields (server.max_header_size, server.max_headers); "
        "send fewer or shorter headers"
    )
    body = error_bytes("headers_too_large", message)
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


def limited_protocol(max_bytes: int, max_headers: int) -> tuple[Any, dict[str, Any]]:
    """uvicorn.Config arguments: httptools with these limits, else h11 with its buffer cap."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is missing: h11 caps what it buffers for one event
        return "h11", {"h11_max_incomplete_event_size": max_bytes}

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """HttpToolsProtocol that answers 431 once a request's head passes the limits."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            self._refused = False

        def on_message_begin(self) -> None:
            self._in_head = True
            self._head_bytes = 0
            super().on_message_begin()

        def on_header(self, name: bytes, value: bytes) -> None:
            if len(self.headers) >= max_headers:
                self._refused = True
                raise ValueError("too many headers")  # stops the parser: see send_400_response
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            in_head = self._in_head
            super().data_received(data)
            if self._refused or not (in_head and self._in_head):
                return
            self._head_bytes += len(data)  # still in the head after this chunk
            if self._head_bytes > max_bytes:
                self._refused = True
                self.send_400_response("")

        def send_400_response(self, msg: str) -> None:
            if not self._refused:
                super().send_400_response(msg)
                return
            self.transport.write(head_too_large(max_bytes, max_headers))
            self.transport.close()

    return LimitedHttpToolsProtocol, {}
