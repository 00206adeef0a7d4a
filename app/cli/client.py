"""`model-registry ls | load | unload | reload`: the CLI's commands against a running server."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from registry.units import format_bytes, format_duration

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_ENV = "MODEL_REGISTRY_ADMIN_TOKEN"


class CLIError(Exception):
    """One readable line for the user; the command exits with 1."""


class Client:
    """A thin HTTP client for the registry's API."""

    def __init__(self, url: str, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        token = os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        import httpx  # here, not at import: `model-registry serve` never needs it

        # one client (and connection pool) for every call: the load's and its progress polls
        self.http: httpx.Client = httpx.Client(headers=headers, timeout=timeout)

    def call(self, method: str, path: str) -> dict[str, Any]:
        """Send one request; a non-2xx answer or no server raises CLIError."""
        import httpx

        try:
            response = self.http.request(method, self.url + path)
        except httpx.TransportError as exc:
            raise CLIError(
                f"cannot reach the server at {self.url} ({type(exc).__name__}); is it running? "
                "Start it with 'model-registry serve', or pass --url"
            ) from None
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {}
        if response.is_success:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        message = message or f"HTTP {response.status_code} {response.reason_phrase}"
        if response.status_code in (401, 403):
            message += f" (the CLI sends the token from ${TOKEN_ENV})"
        raise CLIError(message)


def ls(client: Client, out: TextIO) -> int:
    """Print a table of the models, like `ollama ps`."""
    snapshot = client.call("GET", "/models")
    rows = [("NAME", "STATE", "DEVICE", "SIZE", "IN-FLIGHT", "LAST-USED", "TTL-LEFT")]
    for entry in snapshot["models"]:
        size = entry["size_bytes"]
        ttl = entry.get("ttl_left_seconds")
        rows.append(
            (
                entry["name"],
                entry["state"],
                device_text(entry.get("device"), entry.get("device_resolved")),
                "-"
                if size is None
                else format_bytes(size) + ("" if entry["size_measured"] else "*"),
                str(entry["in_flight"]),
                _ago(entry["last_used"]),
                "-" if ttl is None else format_duration(ttl),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")
    used, budget = snapshot["used_bytes"], snapshot["budget_bytes"]
    out.write(f"\nbudget {format_bytes(budget)}, used {format_bytes(used)}")
    out.write(f" ({100 * used / budget:.0f}%); * = estimated size\n")
    gpus = [d for d in snapshot.get("devices", []) if d.get("device") != "cpu"]
    for device in gpus:  # the host's line is the one above
        limit, held = device["budget_bytes"], device["used_bytes"]
        reserved = device["reserved_bytes"]
        out.write(
            f"{device['device']} budget {format_bytes(limit)}, used {format_bytes(held)}"
            f" ({100 * held / limit:.0f}%), reserved {format_bytes(reserved)},"
            f" {device['models']} model(s)\n"
        )
    return 0


def device_text(configured: str | None, resolved: str | None) -> str:
    """Where a model runs: "cpu", "cuda:0"; "auto->cpu" where the entry's device was resolved
    to another (or ignored: "cuda->cpu"); the entry's own before its first load."""
    if resolved is None or configured is None:
        return resolved or configured or "-"
    if resolved == configured or resolved.startswith(configured + ":"):
        return resolved  # cuda ran on cuda:0: nothing to point out
    return f"{configured}->{resolved}"


def load(client: Client, name: str, out: TextIO, err: TextIO) -> int:
    """Load a model, showing its progress, and print how long it took."""
    started = time.monotonic()
    result: dict[str, Any] = {}
    failure: list[CLIError] = []

    def post() -> None:
        try:
            result.update(client.call("POST", f"/models/{name}/load"))
        except CLIError as exc:
            failure.append(exc)

    worker = threading.Thread(target=post, name="load", daemon=True)
    worker.start()
    _progress(client, name, worker, started, err)
    if failure:
        raise failure[0]
    seconds = time.monotonic() - started
    size = result.get("size_bytes")
    took = result.get("load_seconds")
    detail = f"{format_bytes(size)}, " if size is not None else ""
    load_part = f"load {format_duration(took)}, " if took is not None else ""
    out.write(f"loaded {name} ({detail}{load_part}{format_duration(seconds)} in all)\n")
    return 0


def _progress(
    client: Client, name: str, worker: threading.Thread, started: float, err: TextIO
) -> None:
    """While the load runs: a live line on a terminal, a line per state change otherwise."""
    tty = err.isatty()
    shown = ""
    spinner = "|/-\\"
    tick = 0
    while worker.is_alive():
        worker.join(0.2)
        if not worker.is_alive():
            break
        try:
            entry = client.call("GET", f"/models/{name}")
        except CLIError:
            continue
        elapsed = format_duration(time.monotonic() - started)
        held = entry.get("size_bytes")
        if entry["state"] != "loading":  # not started yet, or done: the result says it
            continue
        line = f"loading {name}" + (f" ({format_bytes(held)})" if held else "")
        if tty:
            tick += 1
            err.write(f"\r{spinner[tick % 4]} {line} {elapsed}\033[K")
            err.flush()
        elif line != shown:
            err.write(f"{line}...\n")
            err.flush()
        shown = line
    if tty and shown:
        err.write("\r\033[K")
        err.flush()


def unload(client: Client, name: str, out: TextIO) -> int:
    """Unload a model once its in-flight requests finish."""
    before = client.call("GET", f"/models/{name}")
    started = time.monotonic()
    after = client.call("POST", f"/models/{name}/unload")
    seconds = format_duration(time.monotonic() - started)
    if before["state"] not in ("loaded", "loading", "unloading"):
        out.write(f"{name} was not loaded ({before['state']})\n")
    else:
        freed = before.get("size_bytes")
        what = f", freed {format_bytes(freed)}" if freed else ""
        out.write(f"unloaded {name} ({after['state']}{what}) in {seconds}\n")
    return 0


def reload(client: Client, out: TextIO) -> int:
    """Re-read models.yaml on the server and print what changed."""
    changes = client.call("POST", "/admin/reload")
    parts = [
        f"{key} {', '.join(changes[key])}"
        for key in ("added", "removed", "replaced", "updated")
        if changes.get(key)
    ]
    out.write("reloaded models.yaml: " + ("; ".join(parts) or "nothing changed") + "\n")
    if changes.get("restart_needed"):
        out.write(f"restart to apply: server.{', server.'.join(changes['restart_needed'])}\n")
    return 0


def run(command: Callable[[], int]) -> int:
    """Run one command; a CLIError becomes one line on stderr and exit code 1."""
    try:
        return command()
    except CLIError as exc:
        print(f"model-registry: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `model-registry ls | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _ago(iso: str | None) -> str:
    if iso is None:
        return "never"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    return "just now" if seconds < 1 else f"{format_duration(seconds)} ago"
