"""`model-registry serve | validate | ls | load | unload | reload`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from registry.config.file import load_config
from registry.errors import ConfigError
from registry.units import format_bytes

log = logging.getLogger("app")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = argparse.ArgumentParser(
        prog="model-registry", description="Serve many models from one process."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--config", default="models.yaml", help="path of models.yaml")
    serve.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: server.port, 8000)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument("--no-access-log", action="store_true", help="do not log each request")
    serve.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="json: one object a line"
    )
    serve.add_argument(
        "--ray",
        action="store_true",
        help="run N registry replicas on a local Ray Serve (needs the [ray] extra)",
    )
    serve.add_argument("--replicas", type=int, default=2, help="replicas with --ray (default 2)")
    serve.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)  # tests: written when up
    validate = commands.add_parser("validate", help="check a models.yaml and exit")
    validate.add_argument("config", help="path of models.yaml")
    _add_client_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(Path(args.config))
    if args.command == "serve":
        return _serve(args)
    return _client_command(args)


def _add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """ls, load, unload, reload: against a running server (token from the environment)."""
    from app.cli.client import DEFAULT_URL, TOKEN_ENV

    helps = {
        "ls": "list the models: state, size, in flight, last used, TTL left",
        "load": f"load a model now and show its progress (needs ${TOKEN_ENV})",
        "unload": f"unload a model after its in-flight requests (needs ${TOKEN_ENV})",
        "reload": f"re-read models.yaml on the server (needs ${TOKEN_ENV})",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
        if name in ("load", "unload"):
            sub.add_argument("name", help="the model's name")


def _client_command(args: argparse.Namespace) -> int:
    from app.cli import client

    http = client.Client(args.url)
    out, err = sys.stdout, sys.stderr
    commands = {
        "ls": lambda: client.ls(http, out),
        "load": lambda: client.load(http, args.name, out, err),
        "unload": lambda: client.unload(http, args.name, out),
        "reload": lambda: client.reload(http, out),
    }
    return client.run(commands[args.command])


def _validate(path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"model-registry: {exc}", file=sys.stderr)
        return 2
    hot = sum(1 for spec in config.models.values() if spec.hot)
    print(
        f"{path}: ok, {len(config.models)} model(s) ({hot} hot), "
        f"budget {format_bytes(config.server.memory_budget)}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from app.logformat import configure

    configure(args.log_level, args.log_format)
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        print(f"model-registry: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if not _is_loopback(host):
        log.warning("binding %s: the server is reachable from other machines", host)
    if args.ray:
        from app.ray.local import run_local  # ray is imported only in the namespace

        return run_local(Path(args.config), args.replicas, host, port, args.ready_file)
    from app.http.server import run_server  # uvicorn is imported only to serve

    return run_server(config, host, port, access_log=not args.no_access_log)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
