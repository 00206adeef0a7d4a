"""The machine a run measured on: CPU, cores, RAM, the versions that matter, the commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.servers import REPO
from bench.wrk import wrk_version

PACKAGES = ("torch", "transformers", "fastapi", "starlette", "uvicorn", "httptools", "uvloop")
# The suite's own outputs do not make the checkout count as changed.
OWN_OUTPUTS = (":!BENCHMARKS.md", ":!BENCHMARKS.json")


def _cpu_and_ram() -> tuple[str, int]:
    """The CPU's model name and the RAM in KiB (0 when /proc cannot tell)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration):
        mem_kib = 0
    return cpu, mem_kib


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def _git(*args: str) -> str:
    command = ["git", "-C", str(REPO), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()


def machine() -> dict[str, Any]:
    """CPU, cores, RAM and the versions that matter."""
    cpu, mem_kib = _cpu_and_ram()
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *OWN_OUTPUTS)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024**2, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **_versions(),
        "wrk": wrk_version(),
        "git": f"{commit}{' (with uncommitted changes)' if dirty else ''}",
    }
