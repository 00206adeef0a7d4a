"""The suite's servers and baseline processes: configs, environment, start, wait, admin.

Every server is `model-registry serve` on 127.0.0.1 and a free port (devkit.server), with its
own temporary models.yaml built from the default one's entries (devkit.demo), and the admin
token set; it is stopped by its PID, also on errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from devkit import demo
from devkit.server import Process, serve

if TYPE_CHECKING:
    from bench.client import Http

REPO = demo.REPO
STORE = demo.STORE
VENV_PY = REPO / ".venv" / "bin" / "python"
CLI = REPO / ".venv" / "bin" / "model-registry"
TOKEN = "bench-admin-token"
BATCH = {"max_size": 32, "max_wait_ms": 5}
IRIS_INPUT = [5.1, 3.5, 1.4, 0.2]


def model(name: str, **overrides: Any) -> dict[str, Any]:
    """A models.yaml entry of a demo model (what it is, not how it is served), with overrides."""
    return {**demo.models()[name], **overrides}


def default_registry(hot: bool = True) -> dict[str, dict[str, Any]]:
    """The default models.yaml's entries (absolute sources), the hot ones hot if `hot`."""
    entries = demo.registry_entries()
    for entry in entries.values():
        entry.pop("description", None)
        if "hot" in entry:
            entry["hot"] = hot
    return entries


def write_config(
    directory: Path, name: str, models: dict[str, dict[str, Any]], **server: Any
) -> Path:
    """Write a models.yaml into `directory`."""
    path = directory / f"{name}.yaml"
    document = {"server": {"memory_budget": "300MiB", **server}, "models": models}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def server_env() -> dict[str, str]:
    """The environment of every server (and baseline) process."""
    env = dict(os.environ)
    env["MODEL_REGISTRY_ADMIN_TOKEN"] = TOKEN
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")  # what the server's loader sets
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    # This checkout's code: the venv's editable install may point at another checkout (a
    # git worktree shares it), and a console script does not put its cwd on sys.path.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_server(config: Path, label: str) -> Process:
    """`model-registry serve --config <config>` on loopback and a free port."""
    return serve(config, "--no-access-log", env=server_env(), cli=[str(CLI)], label=label)


def ready_server(config: Path, label: str) -> Process:
    """A started server once /health/ready answers 200 (stopped if it never does)."""
    server = start_server(config, label)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def wait_state(http: Http, names: Iterable[str], state: str, timeout: float = 60.0) -> None:
    """Wait until every model in `names` shows `state` in GET /models."""
    wanted = set(names)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = {m["name"]: m for m in http.get("/models")["models"]}
        if all(models[n]["state"] == state for n in wanted):
            return
        time.sleep(0.05)
    raise RuntimeError(f"models {sorted(wanted)} never all became {state}")


def unload(http: Http, name: str) -> None:
    """Unload a model through the admin API and wait until it is unloaded."""
    status, body = http.admin(name, "unload")
    if status != 200:
        raise RuntimeError(f"unload {name}: {status} {body}")
    wait_state(http, [name], "unloaded")


def inproc(job: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Run bench.inproc in its own process; its JSON result."""
    argv = [str(VENV_PY), "-m", "bench.inproc", json.dumps(job)]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=server_env(),
        cwd=REPO,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"baseline process failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result
