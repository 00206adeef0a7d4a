"""Limits on request heads (request line + headers), enforced by uvicorn's HTTP parser.

An ASGI middleware sees the headers only once the parser has buffered all of them, so a
20 MB header would already be in memory: the limit is checked as the bytes arrive, and again
when the head ends, so that it holds at its value however the head is split into reads.
"""

from __future__ import annotations

from typing import Any

from app.errors import error_bytes


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
        """HttpToolsProtocol that answers 431 once a request's head passes the limits.

        A head is measured two ways, whatever the reads it arrives in: its bytes on the wire
        (the reads it spans, up to the blank line that ends it, found in the read that does)
        and what the parser gave for it (request line and fields, a lower bound that also
        holds for a pipelined head whose start within a read is unknown). Either over the
        limit refuses it, before the app sees the request.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._wire = 0  # bytes of this head in the reads before the current one
            self._tail = b""  # the last bytes of those reads: the blank line may span two
            self._parsed = 0  # request target and header fields given by the parser
            self._blind = False  # this head began mid-read, after another request ended
            self._ended = False  # a request ended during the current read
            self._chunk = b""  # the current read
            self._refused = False

        def _refuse(self, why: str) -> None:
            self._refused = True
            raise ValueError(why)  # stops the parser: see send_400_response

        def _count(self, size: int) -> None:
            self._parsed += size
            if self._parsed > max_bytes:
                self._refuse("request head too large")

        def on_message_begin(self) -> None:
            self._in_head = True
            self._wire = 0
            self._tail = b""
            self._parsed = 0
            self._blind = self._ended
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if len(self.headers) >= max_headers:
                self._refuse("too many headers")
            self._count(len(name) + len(value) + 3)  # "name:value\r\n", spaces aside
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            method = self.parser.get_method()
            self._count(len(method) + len(b"  HTTP/1.1\r\n\r\n"))
            if not self._blind:
                window = self._tail + self._chunk
                end = window.find(b"\r\n\r\n")
                if end >= 0 and self._wire + end + 4 - len(self._tail) > max_bytes:
                    self._refuse("request head too large")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._ended = True
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            self._chunk = data
            self._ended = False
            super().data_received(data)
            self._chunk = b""
            if self._refused or not self._in_head:
                return
            if self._blind:  # where this head began in the read is unknown: count from the next
                self._blind = False
            else:
                self._wire += len(data)
            self._tail = (self._tail + data)[-3:]
            if self._wire > max_bytes:  # still in the head after this read
                self._refused = True
                self.send_400_response("")

        def send_400_response(self, msg: str) -> None:
            if not self._refused:
                super().send_400_response(msg)
                return
            self.transport.write(head_too_large(max_bytes, max_headers))
            self.transport.close()

    return LimitedHttpToolsProtocol, {}
