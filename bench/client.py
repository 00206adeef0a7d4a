"""HTTP of the suite: a control client (http.client), raw-socket requests and bursts."""

from __future__ import annotations

import http.client
import json
import math
import selectors
import socket
import time
from collections.abc import Sequence
from typing import Any

from bench.inputs import multipart
from bench.servers import TOKEN


class Http:
    """A keep-alive http.client connection for control requests (not for timed ones)."""

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send one request; returns (status, parsed JSON or raw text)."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                response = self._conn.getresponse()
                raw = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        try:
            data: Any = json.loads(raw)
        except ValueError:
            data = raw.decode(errors="replace")
        return response.status, data

    def get(self, path: str) -> Any:
        """GET a JSON document (raises on a non-200)."""
        status, data = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {data}")
        return data

    def predict_text(self, name: str, text: Any) -> tuple[int, Any]:
        """POST JSON inputs to a model."""
        body = json.dumps({"inputs": text}).encode()
        headers = {"Content-Type": "application/json"}
        return self.request("POST", f"/models/{name}/predict", body, headers)

    def predict_image(self, name: str, png: bytes) -> tuple[int, Any]:
        """POST an image upload to a model."""
        body, content_type = multipart(png)
        return self.request("POST", f"/models/{name}/predict", body, {"Content-Type": content_type})

    def admin(self, name: str, action: str) -> tuple[int, Any]:
        """POST /models/{name}/{action} with the admin token."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return self.request("POST", f"/models/{name}/{action}", b"", headers)

    def close(self) -> None:
        """Drop the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def raw_request(port: int, method: str, path: str, body: bytes = b"", ctype: str = "") -> bytes:
    """The bytes of one HTTP/1.1 request (keep-alive)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _response_complete(buffer: bytes) -> int | None:
    """The status once `buffer` holds a whole response with a Content-Length body."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end].decode("latin-1").split("\r\n")
    length = 0
    for line in head[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length":
            length = int(value)
    if len(buffer) < end + 4 + length:
        return None
    return int(head[0].split()[1])


def fire(port: int, requests: Sequence[bytes], timeout: float = 120.0) -> list[tuple[int, float]]:
    """Send requests at once on pre-opened sockets (raw); (status, seconds) of each.

    The connections are opened (and accepted by the server) first, then every request is
    written in one tight loop; each time is from the first write to its complete response.
    """
    socks = []
    try:
        for _ in requests:
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(sock)
        time.sleep(0.2)  # let the server accept them all before the clock starts
        selector = selectors.DefaultSelector()
        buffers: dict[int, bytes] = {}
        results: list[tuple[int, float]] = [(0, math.nan)] * len(requests)
        started = time.perf_counter()
        for i, (sock, data) in enumerate(zip(socks, requests, strict=True)):
            sock.sendall(data)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, i)
            buffers[i] = b""
        deadline = started + timeout
        pending = len(requests)
        while pending and time.perf_counter() < deadline:
            for key, _ in selector.select(timeout=1.0):
                i = key.data
                chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
                buffers[i] += chunk
                status = _response_complete(buffers[i])
                if status is None and chunk:
                    continue
                results[i] = (status or 0, time.perf_counter() - started)
                selector.unregister(key.fileobj)
                pending -= 1
        selector.close()
        return results
    finally:
        for sock in socks:
            sock.close()
