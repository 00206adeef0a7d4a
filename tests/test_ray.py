"""The registry on a real local Ray Serve with 2 replicas (`serve --ray`).

One cluster serves the whole module (starting Ray costs ~30 s). It runs in a loopback-only
network namespace; the tests reach it through the host relay on 127.0.0.1, like a user.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from support import ROOT, digit_png, wait_for

from devkit.server import CLI, Process, free_port

pytestmark = pytest.mark.slow
pytest.importorskip("ray.serve", reason="needs the [ray] extra (scripts/setup.sh installs it)")

FAKES = ("a", "b", "c", "d")
BUDGET = 25_000_000  # per replica: two 10 MB fakes and the digits model, not three fakes
CONFIG = """\
server: {{memory_budget: {budget}, drain_timeout: 5}}
models:
  a: {{loader: fake, options: {{size: 10MB, load_seconds: 0.1}}}}
  b: {{loader: fake, options: {{size: 10MB, load_seconds: 0.1}}}}
  c: {{loader: fake, options: {{size: 10MB, load_seconds: 0.1}}}}
  d: {{loader: fake, options: {{size: 10MB, load_seconds: 0.1}}}}
  digits:
    task: image-classification
    source: {store}/digits-resnet
"""


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    flags = ["-n"] if os.geteuid() == 0 else ["-rn"]
    return subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode == 0


class RayServer(Process):
    """`model-registry serve --ray --replicas 2` (devkit's `Process`), stopped by its PID.

    Ready when serve --ray writes its ready file: the PID of the process inside the namespace.
    """

    def __init__(self, config: Path, tmp: Path) -> None:
        self.ready_file = tmp / "ready"
        port = free_port()
        argv = [
            *(*CLI, "serve", "--ray", "--replicas", "2"),
            *("--config", str(config), "--port", str(port)),
            *("--ready-file", str(self.ready_file), "--no-access-log"),
        ]
        # Not measured by coverage: tracing every Ray process slows the cluster enough
        # that its routing reports go stale and the routing assertions turn flaky.
        env = {k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_CONFIG"}
        super().__init__(argv, tmp / "serve.log", port, env)

    def wait_ready(self, timeout: float = 240.0) -> float:
        return self.wait_until(self.ready_file.exists, "serve --ray wrote its ready file", timeout)

    @property
    def inner_pid(self) -> int:
        return int(self.ready_file.read_text())


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = ROOT / "model-store"
    if not (store / "digits-resnet" / "BUILD.json").exists():  # the only demo model used here
        build = [sys.executable, str(ROOT / "scripts/build_models.py"), "--only", "digits-resnet"]
        subprocess.run(build, check=True)
    path = tmp_path_factory.mktemp("ray") / "models.yaml"
    path.write_text(CONFIG.format(budget=BUDGET, store=store))
    return path


@pytest.fixture(scope="module")
def ray_server(config_path: Path) -> Iterator[RayServer]:
    if not _can_unshare():
        pytest.skip("cannot create a network namespace here (unshare -n)")
    server = RayServer(config_path, config_path.parent)
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.stop(timeout=90) == 0, server.log
    # Stopped by its PID, the cluster went with it: nothing of the namespace is left.
    with pytest.raises(ProcessLookupError):
        os.kill(server.inner_pid, 0)


@pytest.fixture(scope="module")
def client(ray_server: RayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_server.url, timeout=60) as http:
        yield http


def predict(client: httpx.Client, name: str, text: str = "x") -> httpx.Response:
    return client.post(f"/models/{name}/predict", json={"inputs": text})


def models(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/models")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def loads(view: dict[str, Any]) -> int:
    return sum(m["load_count"] for m in view["models"])


def test_ray_runs_in_a_loopback_only_network_namespace(ray_server: RayServer) -> None:
    """Network safety: every socket Ray opens is in a namespace whose only device is lo."""
    pid = ray_server.inner_pid
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    devices = [
        line.split(":")[0].strip()
        for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    ]
    assert devices == ["lo"]


def test_models_spread_over_the_replicas(client: httpx.Client) -> None:
    """4 models that fit only across both replicas all get loaded, two on each."""
    for name in FAKES:
        assert predict(client, name).status_code == 200
    view = models(client)
    held = sorted(sorted(r["models"]) for r in view["replicas"])
    assert len(view["replicas"]) == 2
    assert sorted(name for h in held for name in h) == list(FAKES), held
    assert [len(h) for h in held] == [2, 2]
    assert loads(view) == 4


def test_requests_go_to_the_replica_holding_the_model(client: httpx.Client) -> None:
    """After warm-up, 200 requests over the 4 models cause no further loads."""
    before = models(client)
    assert loads(before) == 4
    statuses: Counter[int] = Counter()

    def run(offset: int) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as http:
            for i in range(50):
                statuses[predict(http, FAKES[(i + offset) % 4], f"t{i}").status_code] += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == {200: 200}
    after = models(client)
    assert loads(after) == 4, [(m["name"], m["replicas"]) for m in after["models"]]
    served = {m["name"]: m["served"] for m in after["models"]}
    assert (
        sum(served[n] for n in FAKES)
        - sum(m["served"] for m in before["models"] if m["name"] in FAKES)
        == 200
    )


def test_get_models_answers_for_the_whole_deployment(client: httpx.Client) -> None:
    """Budget and use per replica and in total; each model's state on every replica."""
    view = models(client)
    replicas = view["replicas"]
    assert [r["budget_bytes"] for r in replicas] == [BUDGET, BUDGET]
    assert view["budget_bytes"] == 2 * BUDGET
    assert view["used_bytes"] == sum(r["used_bytes"] for r in replicas) == 40_000_000
    assert all(r["free_bytes"] == r["budget_bytes"] - r["used_bytes"] for r in replicas)
    ids = sorted(r["replica"] for r in replicas)
    by_name = {m["name"]: m for m in view["models"]}
    assert set(by_name) == {*FAKES, "digits"}
    for name in FAKES:
        states = by_name[name]["replicas"]
        assert sorted(states) == ids
        assert sorted(s["state"] for s in states.values()) == ["loaded", "unloaded"]
        assert by_name[name]["state"] == "loaded"
    one = client.get("/models/a").json()
    assert one["state"] == "loaded" and sorted(one["replicas"]) == ids
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and sorted(ready.json()["replicas"]) == ids


def test_same_answers_and_errors_as_the_plain_server(
    client: httpx.Client, config_path: Path
) -> None:
    """Paths, JSON and errors through Ray's proxy equal the single-process server's."""
    from app.main import create_app

    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/models/a/predict", {"json": {"inputs": ["x", "y"], "parameters": {"k": 1}}}),
        ("POST", "/models/nope/predict", {"json": {"inputs": "x"}}),
        (
            "POST",
            "/models/a/predict",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ),
        ("POST", "/models/a/predict", {"json": {"inputs": "x", "extra": 1}}),
        ("POST", "/models/digits/predict", {"json": {"inputs": "x"}}),
        ("GET", "/models/nope", {}),
        (
            "POST",
            "/models/digits/predict",
            {"files": {"file": ("d.png", digit_png(3), "image/png")}},
        ),
    ]
    image = {"files": {"file": ("d.png", digit_png(3), "image/png")}}
    with TestClient(create_app(config_path)) as plain:
        for side in (plain, client):  # loading torch may outlast request_timeout: warm up
            deadline = time.monotonic() + 180
            while side.post("/models/digits/predict", **image).status_code == 503:  # type: ignore[arg-type]
                assert time.monotonic() < deadline, "digits never loaded"
        for method, path, kwargs in cases:
            want = plain.request(method, path, **kwargs)
            got = client.request(method, path, **kwargs)
            assert (got.status_code, got.json()) == (want.status_code, want.json()), path
            assert got.status_code in (200, 404, 415, 422)


def test_a_replica_killed_mid_traffic(client: httpx.Client, ray_server: RayServer) -> None:
    """Killing a replica loses at most its in-flight requests, each a clear 503 (most are
    retried once elsewhere); its models load again on their next request; nothing hangs."""
    view = models(client)
    victim = next(r for r in view["replicas"] if set(r["models"]) & set(FAKES))
    statuses: Counter[int] = Counter()
    errors: list[dict[str, Any]] = []
    stop = threading.Event()

    def run(offset: int) -> None:
        with httpx.Client(base_url=ray_server.url, timeout=60) as http:
            i = 0
            while not stop.is_set():
                response = predict(http, FAKES[(i + offset) % 4], f"k{i}")
                statuses[response.status_code] += 1
                if response.status_code != 200:
                    errors.append(response.json())
                i += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(statuses.values()) >= 40, "40 answers before the kill")
        os.kill(victim["pid"], signal.SIGKILL)
        served = sum(statuses.values())
        wait_for(lambda: sum(statuses.values()) >= served + 100, "100 answers after", limit=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    assert set(statuses) <= {200, 503}, (statuses, errors)
    assert all(e["error"]["type"] == "replica_lost" for e in errors), errors
    assert statuses[200] >= served + 100 - statuses[503]
    # Every model, the victim's included, answers again (loaded on a live replica).
    for name in FAKES:
        assert predict(client, name).status_code == 200
    alive = [r["replica"] for r in models(client)["replicas"]]
    assert victim["replica"] not in alive
