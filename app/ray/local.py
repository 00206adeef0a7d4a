"""`model-registry serve --ray`: a local Ray cluster that cannot be reached from the network.

Ray binds internal ports (GCS, raylet, object manager, workers, agents) on every interface,
and not all of them can be told otherwise. So the whole cluster runs inside a network
namespace of its own that has only loopback (`unshare -n`; needs root or unprivileged user
namespaces, then `unshare -rn` is used): nothing in it is reachable from outside, and it
reaches nothing outside. Ray's HTTP proxy listens on 127.0.0.1 inside that namespace, and
this process relays the host's `--host:--port` to it through a Unix socket (a file, which a
network namespace does not isolate).

    host: client -> host:port -> [relay] -> unix socket
    netns (lo only): unix socket -> [relay] -> 127.0.0.1:8000 -> Ray proxy -> Gateway -> replicas
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

log = logging.getLogger("app")
INNER_HTTP_PORT = 8000  # inside the namespace nothing else can hold it
APP_NAME = "model-registry"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _relay(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    open_upstream: Callable[[], Awaitable[Streams]],
) -> None:
    """Copy bytes both ways between a client and a fresh upstream connection."""
    try:
        up_r, up_w = await open_upstream()
    except OSError:
        client_w.close()
        return
    await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))


def unshare_command() -> list[str]:
    """The prefix that runs a command in a new loopback-only network namespace."""
    if shutil.which("unshare") is None:
        raise RuntimeError("--ray needs util-linux's `unshare` (Linux only)")
    return ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]


def run_local(config: Path, replicas: int, host: str, port: int, ready_file: Path | None) -> int:
    """Start Ray in its own network namespace and serve host:port until SIGINT/SIGTERM."""
    workdir = Path(tempfile.mkdtemp(prefix="mr-ray-"))
    sock = workdir / "http.sock"
    inner = [
        sys.executable,
        "-m",
        "app.ray.local",
        "--config",
        str(config.resolve()),
        "--replicas",
        str(replicas),
        "--socket",
        str(sock),
        "--ray-dir",
        str(workdir / "r"),
    ]
    child = subprocess.Popen(
        [*unshare_command(), "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner],
        start_new_session=True,  # its own process group: stopped as a whole below
    )
    log.info("ray: cluster starting in a loopback-only network namespace (pid %d)", child.pid)
    try:
        return asyncio.run(_serve_host(child, sock, host, port, ready_file))
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # anything of Ray's left in that group
        shutil.rmtree(workdir, ignore_errors=True)


async def _serve_host(
    child: subprocess.Popen[bytes], sock: Path, host: str, port: int, ready_file: Path | None
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ready = sock.with_suffix(".ready")
    while not ready.exists():  # the inner process creates it once Serve answers
        if child.poll() is not None:
            log.error("ray: the cluster process exited with %s", child.returncode)
            return 1
        if stop.is_set():
            return 0
        await asyncio.sleep(0.1)

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _relay(r, w, lambda: asyncio.open_unix_connection(str(sock)))

    server = await asyncio.start_server(on_client, host, port)
    log.info("ray: serving on http://%s:%d", host, port)
    if ready_file is not None:
        await asyncio.to_thread(ready_file.write_text, str(child.pid))
    async with server:
        waiter = asyncio.create_task(stop.wait())
        while not stop.is_set():
            await asyncio.wait({waiter}, timeout=0.5)
            if child.poll() is not None:
                log.error("ray: the cluster process exited with %s", child.returncode)
                return 1
    log.info("ray: stopping")
    return 0


# ------------------------------------------------------------- inside the namespace


def _inner(config: Path, replicas: int, sock: Path, ray_dir: Path) -> int:
    import ray
    from ray import serve

    from app.ray.gateway import build_app

    ray.init(
        address="local",  # a cluster of our own, never one found on this machine
        _node_ip_address="127.0.0.1",
        _temp_dir=str(ray_dir),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": INNER_HTTP_PORT})
        serve.run(build_app({"config": str(config), "replicas": replicas}), name=APP_NAME)
        return asyncio.run(_serve_inner(sock))
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


async def _serve_inner(sock: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _relay(r, w, lambda: asyncio.open_connection("127.0.0.1", INNER_HTTP_PORT))

    server = await asyncio.start_unix_server(on_client, str(sock))
    sock.with_suffix(".ready").touch()
    async with server:
        await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the process inside the namespace."""
    parser = argparse.ArgumentParser(prog="app.ray.local")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--ray-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return _inner(args.config, args.replicas, args.socket, args.ray_dir)


if __name__ == "__main__":
    raise SystemExit(main())
