"""Finding worker processes from /proc (no psutil): the forkserver's live children."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.config.file import parse_config
from registry.loaders import LoadContext
from registry.process import proxy as workers


def children_of(pid: int) -> list[int]:
    """Pids of the live (not zombie) children of `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


def worker_children() -> list[int]:
    """Live model workers of this process's forkserver (none if it has not started): its
    children but the spare worker, once no spare is being started."""
    server = workers.forkserver_pid()
    if server is None:
        return []
    spare = workers.spares.settle(60.0)
    return [pid for pid in children_of(server) if spare is None or pid != spare.pid]


def rss_of(pid: int) -> int:
    """Resident bytes of a process, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.fixture(scope="session")
def forkserver() -> Iterator[None]:
    """The forkserver, started and past its imports (the first worker waits for those)."""
    config = parse_config("models:\n  warm:\n    loader: fake\n", Path("warm.yaml"))
    ctx = LoadContext("warm", config.models["warm"], None, Path("."))
    workers.load_in_worker(ctx, config.server, load_timeout=600).close()
    yield
