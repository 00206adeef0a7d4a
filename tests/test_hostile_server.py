"""A real server against hostile clients: huge headers, hang-ups."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import served, wait_for

from devkit.server import Process

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Process]:
    text = (
        "server: {memory_budget: 100MB, max_header_size: 16KiB, max_headers: 50}\n"
        "models:\n"
        "  picture: {loader: fake, input: image, options: {size: 1kB}}\n"
    )
    with served(tmp_path, text) as process:
        yield process


def send_head(port: int, head: bytes) -> bytes:
    """Send `head` in 64 kB pieces (the server may hang up midway); return its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            for start in range(0, len(head), 65536):
                sock.sendall(head[start : start + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it was all sent: the point of the limit
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def queued_bytes(server_port: int, client_port: int) -> int | None:
    """Bytes of the loopback connection between the two ports not yet read by either side
    (the send and receive queues of both ends, from /proc/net/tcp); None until both are seen.
    """
    server, client = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    ends = {f"{server} {client}", f"{client} {server}"}  # local and remote address of each
    queued = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if f"{fields[1]} {fields[2]}" in ends:
            tx, _, rx = fields[4].partition(":")
            queued.append(int(tx, 16) + int(rx, 16))
    return sum(queued) if len(queued) == 2 else None


def test_a_20_mb_header_is_refused_with_431(server: Process) -> None:
    """The parser stops at server.max_header_size instead of buffering 20 MB."""
    head = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000_000 + b"\r\n\r\n"
    answer = send_head(server.port, head)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"type": "headers_too_large"' in answer
    assert httpx.get(f"{server.url}/health/live", timeout=10).status_code == 200


def test_too_many_headers_are_refused_with_431(server: Process) -> None:
    """More than server.max_headers fields is a 431, however short they are."""
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(60))
    answer = send_head(server.port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    fewer = {f"x-{i}": "1" for i in range(40)}
    assert httpx.get(f"{server.url}/health/live", headers=fewer, timeout=10).status_code == 200


def test_a_client_hanging_up_mid_upload_is_one_info_line(server: Process) -> None:
    """No ERROR and no traceback: the client went away, the server says so once."""
    boundary = b"xyz"
    head = (
        b"POST /models/picture/predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
        b"Content-Length: 1000000\r\n\r\n"
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + b"\x89PNG" + b"\x00" * 100_000
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        client_port = sock.getsockname()[1]
        # The server has read everything sent so far: it is reading the body when we hang up.
        wait_for(lambda: queued_bytes(server.port, client_port) == 0, "the server read all we sent")
    wait_for(lambda: "disconnected" in server.log, "the server logged the hang-up", limit=20)
    assert server.stop() == 0
    lines = [line for line in server.log.splitlines() if "disconnected" in line]
    assert len(lines) == 1 and " INFO " in lines[0], server.log
    assert "ERROR" not in server.log and "Traceback" not in server.log, server.log
