"""Scenario `soak`: the server's memory under load-and-evict churn, held for minutes.

    scripts/bench.sh --only soak --no-write              the suite's row (8 minutes; quick: 2)
    .venv/bin/python -m bench.soak --seconds 150         a shorter soak, every sample printed

8 closed-loop clients send requests to 10 fake models picked by Zipf(1.0), each holding its
20 MB for real (`allocate: true`), and now and then to digits and langid; the budget holds
about 3 of the fakes, so nearly every request to a cold one loads it and evicts another.
A sampler reads the server's RSS, its private memory and its thread count every few seconds.
The row is the median RSS of the last minute against that of the second (the one-time costs
of the first loads are paid by then): what the churn leaves behind, per load and unload.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.client import Http
from bench.context import Context
from bench.inputs import Inputs
from bench.progress import progress
from bench.row import Row
from bench.servers import model, start_server, write_config
from bench.stats import median
from devkit.server import Process

FAKES = 10
FAKE_SIZE = 20_000_000
BUDGET = 3 * FAKE_SIZE + 4_000_000  # three fakes, digits and langid
CLIENTS = 8
SECONDS = 480.0  # the full soak; --quick: QUICK_SECONDS
QUICK_SECONDS = 120.0
WARM = 60.0  # seconds: the windows compared (a quarter of a shorter soak)
SAMPLE_EVERY = 5.0
DEMO_SHARE = 0.2  # of requests, to digits and langid (half each)
SEED = 12


def models(isolation: str | None = None) -> dict[str, dict[str, Any]]:
    """The soak's models.yaml entries: the fakes, digits and langid."""
    entries: dict[str, dict[str, Any]] = {
        f"zipf-{i}": {
            "loader": "fake",
            **({"isolation": isolation} if isolation else {}),
            "options": {
                "size": FAKE_SIZE,
                "allocate": True,
                "load_seconds": 0.05,
                "predict_seconds": 0.005,
            },
        }
        for i in range(FAKES)
    }
    entries["digits"] = model("digits")
    entries["langid"] = model("langid")
    return entries


def process_figures(pid: int) -> dict[str, int]:
    """RSS, private memory (smaps_rollup) and the thread count of a process."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            figures["rss"] = int(value.split()[0]) * 1024
        elif key == "Threads":
            figures["threads"] = int(value)
    private = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Private_Dirty", "Private_Clean"):
            private += int(value.split()[0]) * 1024
    figures["private"] = private
    return figures


@dataclass
class Soak:
    """Clients, a sampler and what they counted."""

    server: Process
    png: bytes
    sentence: str
    seconds: float
    statuses: dict[int, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    idle: dict[str, Any] = field(default_factory=dict)  # the sample after 10 s without requests
    loads_by_model: dict[str, int] = field(default_factory=dict)  # at the last sample
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, index: int) -> None:
        """One closed-loop client until the soak ends."""
        rng = random.Random(SEED + index)
        weights = [1 / (rank + 1) for rank in range(FAKES)]
        http = Http(self.server.port)
        try:
            while not self.stop.is_set():
                pick = rng.random()
                if pick < DEMO_SHARE / 2:
                    status = http.predict_image("digits", self.png)[0]
                elif pick < DEMO_SHARE:
                    status = http.predict_text("langid", self.sentence)[0]
                else:
                    rank = rng.choices(range(FAKES), weights)[0]
                    status = http.predict_text(f"zipf-{rank}", f"client {index}")[0]
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
        finally:
            http.close()

    def sample(self, started: float) -> dict[str, Any]:
        """One reading: the process's figures and the registry's loads."""
        http = Http(self.server.port)
        try:
            snapshot = http.get("/models")
        finally:
            http.close()
        loads = sum(m["load_count"] for m in snapshot["models"])
        self.loads_by_model = {m["name"]: m["load_count"] for m in snapshot["models"]}
        loaded = sum(m["state"] == "loaded" for m in snapshot["models"])
        reading: dict[str, Any] = {
            "t": round(time.monotonic() - started, 1),
            **process_figures(self.server.pid),
            "loads": loads,
            "unloads": loads - loaded,
            "used_bytes": snapshot["used_bytes"],
        }
        self.samples.append(reading)
        return reading

    def run(self, *, verbose: bool = False) -> None:
        """The clients for `seconds`, sampled every SAMPLE_EVERY seconds, then a short idle."""
        threads = [
            threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(CLIENTS)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        next_progress = 0.0
        while (elapsed := time.monotonic() - started) < self.seconds:
            reading = self.sample(started)
            if verbose or elapsed >= next_progress:
                progress(f"  soak {_line(reading)}")
                next_progress = elapsed + 60
            time.sleep(SAMPLE_EVERY)
        self.stop.set()
        for thread in threads:
            thread.join(120)
        self.samples[-1:] = [self.sample(started)]  # the end: the clients have stopped
        time.sleep(10)  # idle: what the server gives back by itself
        self.idle = self.sample(started)
        progress(f"  soak end {_line(self.samples[-1])}; idle {_line(self.idle)}")

    def level(self, start: float, end: float) -> dict[str, Any]:
        """The median RSS and private memory of the samples taken from `start` to `end`
        seconds (the 20 MB fakes coming and going move a single reading by 40 MB), and the
        threads and loads at the last of them."""
        window = [s for s in self.samples if start <= s["t"] <= end] or self.samples[-1:]
        return {
            "t": [window[0]["t"], window[-1]["t"]],
            "rss": median(s["rss"] for s in window),
            "private": median(s["private"] for s in window),
            "threads": window[-1]["threads"],
            "loads": window[-1]["loads"],
            "unloads": window[-1]["unloads"],
            "samples": len(window),
        }


def _line(reading: dict[str, Any]) -> str:
    mb = 1e6
    return (
        f"t={reading['t']:.0f}s rss={reading['rss'] / mb:.0f} MB "
        f"private={reading['private'] / mb:.0f} MB threads={reading['threads']} "
        f"loads={reading['loads']}"
    )


def measure(
    workdir: Path,
    seconds: float,
    *,
    isolation: str | None = None,
    budget: int = BUDGET,
    eviction: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run one soak; its samples and counts."""
    inputs = Inputs(workdir / "inputs")
    entries = models(isolation)
    settings: dict[str, Any] = {"memory_budget": budget, "watch": False}
    if eviction is not None:
        settings["eviction"] = eviction
    config = write_config(workdir, "soak", entries, **settings)
    with start_server(config, "soak") as server:
        server.wait_ready()
        soak = Soak(
            server,
            inputs.files("image")[0].read_bytes(),
            inputs.texts[0],
            seconds,
        )
        soak.run(verbose=verbose)
        span = min(WARM, seconds / 4)
        return {
            "seconds": seconds,
            "warm": soak.level(span, 2 * span),  # the minute after the first
            "end": soak.level(seconds - span, seconds + 60),  # the last minute, and the end
            "last": soak.samples[-1],
            "idle": soak.idle,
            "loads_by_model": soak.loads_by_model,
            "statuses": {str(k): v for k, v in sorted(soak.statuses.items())},
            "samples": soak.samples,
        }


def soak(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """RSS at the end of the soak against RSS after its first minute."""
    seconds = ctx.soak_seconds or (QUICK_SECONDS if ctx.quick else SECONDS)
    progress(f"  soak: {CLIENTS} clients for {seconds:g}s, {FAKES} fakes of 20 MB, budget ~3")
    raw = measure(ctx.workdir, seconds)
    span = min(WARM, seconds / 4)
    warm, end = raw["warm"], raw["end"]
    other = sum(v for k, v in raw["statuses"].items() if k != "200")
    note = (
        f"{end['loads']} loads, {end['unloads']} unloads, {sum(raw['statuses'].values())} "
        f"answers ({other} not 200); threads {warm['threads']} -> {end['threads']}; "
        f"after 10 s idle {raw['idle']['rss'] / 1e6:.0f} MB"
    )
    rows = [
        Row(
            f"soak: median RSS in the last {span:g} s of {seconds / 60:g} min of load-and-evict "
            f"churn vs in {span:g}-{2 * span:g} s",
            end["rss"] / 1e6,
            warm["rss"] / 1e6,
            "MB",
            "ratio",
            1.10,
            note=note,
        )
    ]
    return rows, raw


def main() -> None:
    """A soak on its own, every sample printed (to find a leak's trend)."""
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--isolation", choices=["thread", "process"])
    parser.add_argument("--budget", type=int, default=BUDGET, help="bytes")
    parser.add_argument("--eviction", choices=["lru", "cost"], help="the server's default: cost")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        raw = measure(
            Path(workdir),
            args.seconds,
            isolation=args.isolation,
            budget=args.budget,
            eviction=args.eviction,
            verbose=True,
        )
    warm, end = raw["warm"], raw["end"]
    print(f"median rss {warm['rss'] / 1e6:.0f} MB over {warm['t']}s -> {end['rss'] / 1e6:.0f} MB")
    print(f"statuses {raw['statuses']} loads {raw['loads_by_model']}")


if __name__ == "__main__":
    main()
