"""A server process on 127.0.0.1 and a free port, its output in a log file, stopped by its PID.

`serve(config)` starts `model-registry serve --config <config>`; `Process` wraps any server
command (the benchmarks' bare FastAPI baseline, the tests' `serve --ray`). It waits for a
status, or for any condition (`wait_until`), sends signals and reads its log. Stopping sends
SIGTERM, waits, then SIGKILL, also when the `with` block ends on an error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from devkit.demo import REPO

CLI = (sys.executable, "-m", "app.cli")
POLL = 0.005  # seconds between two readiness probes


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """GET path on a new connection (raw socket); the status, or None if nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            sock.sendall(head.encode())
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
            return int(data.split()[1])
    except (OSError, ValueError, IndexError):
        return None


class Process:
    """A server process listening on 127.0.0.1:`port`, stopped by its PID."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        port: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=str(REPO),
        )
        self.pid = self.proc.pid

    def wait_until(self, done: Callable[[], bool], what: str, timeout: float) -> float:
        """Poll `done` until it holds; seconds since the process started.

        An error with the log's tail if the process exits first; the timeout only turns a
        hang into an error.
        """
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if done():
                return time.perf_counter() - self.started
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(POLL)
        raise RuntimeError(f"not in {timeout:g}s: {what}:\n{self.tail()}")

    def wait_status(self, path: str, want: int = 200, timeout: float = 120.0) -> float:
        """Poll `path` until it answers `want`; seconds since the process started."""
        return self.wait_until(
            lambda: get_status(self.port, path) == want, f"{path} answers {want}", timeout
        )

    def wait_live(self, timeout: float = 60.0) -> float:
        """Wait for /health/live 200 (the server accepts requests)."""
        return self.wait_status("/health/live", 200, timeout)

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait for /health/ready 200 (every hot model loaded)."""
        return self.wait_status("/health/ready", 200, timeout)

    def send(self, sig: signal.Signals) -> None:
        """Send `sig` to the process (by its PID)."""
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit code (subprocess.TimeoutExpired on a hang)."""
        return self.proc.wait(timeout)

    def rss_bytes(self) -> int:
        """VmRSS of the process, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    @property
    def log(self) -> str:
        """Everything the process has written so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        """The end of the log."""
        return "\n".join(self.log.splitlines()[-lines:])

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; the exit code."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"pid {self.pid} ignored SIGTERM for {timeout:g}s: SIGKILL", file=sys.stderr)
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(
    config: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    cli: Sequence[str] = CLI,
    label: str = "server",
    host: str | None = "127.0.0.1",
    log_dir: Path | None = None,
) -> Process:
    """`<cli> serve --config <config> [args]` on a free port; its log beside the config.

    `env`: the whole environment of the process (None: this one's; `environ` adds to it).
    `host`: None leaves the address to the CLI's default (loopback; a test checks it).
    `log_dir`: where the log goes, if not beside the config.
    """
    port = free_port()
    argv = [*cli, "serve", "--config", str(config), "--port", str(port)]
    if host is not None:
        argv += ["--host", host]
    log = (log_dir or config.parent) / f"{label}-{port}.log"
    return Process([*argv, *args], log, port, env)


def environ(**extra: str) -> dict[str, str]:
    """This process's environment with `extra` added (for `env=`)."""
    return {**os.environ, **extra}
