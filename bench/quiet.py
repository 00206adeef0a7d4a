"""Other processes on a shared machine: wait for them to leave the CPUs alone, count them.

Before a measurement the suite waits (a bounded time) until other processes leave the CPUs
idle; during it, it counts the cores they used (the machine's busy time minus ours).
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.progress import progress


def _machine_jiffies() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def _pid_jiffies(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far."""
    return _pid_jiffies(pid) / os.sysconf("SC_CLK_TCK")


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


@dataclass
class Quiet:
    """The quiet waits of one run: their limits, and the waiting time the run has left."""

    max_wait: float = 30.0  # seconds, per wait (--quiet-wait; 0: do not wait)
    budget: float = 180.0  # seconds of waiting in the whole run; spent as waits happen
    threshold: float = 0.25  # cores: below this, the others count as quiet
    retry_above: float = 0.3  # cores: a measurement disturbed more is taken again once

    def wait(self, pids: Iterable[int] = ()) -> float:
        """Wait until other processes leave the CPUs idle (< threshold cores over 0.5 s).

        Our own processes (this driver, its children, `pids`) do not count. Waits at most
        `max_wait` here and `budget` in a whole run; the last reading.
        """
        pids = list(pids)
        limit = min(self.max_wait, self.budget)
        started = time.monotonic()
        waited = False
        while True:
            with Interference(pids) as other:
                time.sleep(0.5)  # the sampling window of the reading, not a synchronisation
            if other.cores < self.threshold or time.monotonic() >= started + limit:
                if waited:
                    self._spent(time.monotonic() - started, other.cores)
                return other.cores
            if not waited:
                progress(f"  other processes use {other.cores:.2f} cores: waiting up to {limit:g}s")
                waited = True

    def _spent(self, seconds: float, busy: float) -> None:
        self.budget = max(0.0, self.budget - seconds)
        progress(
            f"  waited {seconds:.0f}s: {busy:.2f} cores busy now "
            f"({self.budget:.0f}s of waiting left for this run)"
        )

    def measure(
        self, label: str, pids: Iterable[int], measure: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """measure() after a quiet wait; again once if other processes used the CPUs meanwhile.

        The result gets "others_cores"; of two attempts, the less disturbed one is kept.
        """
        pids = list(pids)
        best: dict[str, Any] | None = None
        for attempt in (1, 2):
            self.wait(pids)
            with Interference(pids) as other:
                result = measure()
            result["others_cores"] = round(other.cores, 3)
            if best is None or other.cores < best["others_cores"]:
                best = result
            if other.cores <= self.retry_above or attempt == 2:
                break
            progress(f"  {label}: other processes used {other.cores:.2f} cores; measuring again")
        assert best is not None
        return best
