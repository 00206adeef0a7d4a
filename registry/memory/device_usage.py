"""Memory held on a device, per process: what a GPU's budget must really see.

- Real GPUs: NVML's used memory for each process on the device (its whole footprint there:
  CUDA context, allocator cache, tensors); where NVML is missing, torch's
  `memory_reserved` for this process only (it misses the CUDA context, so it undercounts).
- Simulated GPUs: what the fake loader claims (`options: {device_bytes: 100MB}`), kept in a
  ledger of small files, one per claim, named by the claiming process's pid. Files survive
  a fork and a crash, so a worker process's claim is seen by the server, and a process
  that dies gives its claims back the way a GPU frees a dead process's memory: the reader
  skips (and removes) the claims of pids that no longer run.

The host is not measured here: a process's host memory is `registry/memory/sizes.py`'s job.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from registry.memory.devices import Device, nvml, nvml_handles

LEDGER_ENV = "MODEL_REGISTRY_DEVICE_LEDGER"


def process_bytes(device: Device, pid: int) -> int | None:
    """Bytes process `pid` holds on `device`; None where this cannot be measured."""
    if device.kind == "simulated":
        return ledger().claimed(device.name, pid)
    if device.kind == "nvml":
        used = nvml_process_bytes(device, [pid])
        return None if used is None else used.get(pid, 0)
    if device.kind == "torch" and pid == os.getpid():
        return torch_reserved(device)
    return None


def processes_bytes(device: Device, pids: Iterable[int]) -> int | None:
    """Bytes the processes `pids` hold together on `device`; None where not measurable."""
    total = 0
    for pid in pids:
        held = process_bytes(device, pid)
        if held is None:
            return None
        total += held
    return total


def device_used(device: Device) -> int | None:
    """Bytes in use on the whole device, by every process; None where not measurable."""
    if device.kind == "simulated":
        return ledger().claimed(device.name)
    if device.kind == "nvml":
        module, handle = _nvml_handle(device)
        if module is None:
            return None
        return int(module.nvmlDeviceGetMemoryInfo(handle).used)
    return None


def nvml_process_bytes(device: Device, pids: Iterable[int]) -> dict[int, int] | None:
    """NVML's used memory on `device` for each of `pids` that runs there (compute and
    graphics contexts); None without NVML or where the driver hides the figures (as in a
    container whose pids NVML does not know)."""
    module, handle = _nvml_handle(device)
    if module is None:
        return None
    wanted = set(pids)
    found: dict[int, int] = {}
    try:
        running = [
            *module.nvmlDeviceGetComputeRunningProcesses(handle),
            *module.nvmlDeviceGetGraphicsRunningProcesses(handle),
        ]
    except Exception:
        return None
    for proc in running:
        if proc.pid in wanted:
            if proc.usedGpuMemory is None:
                return None
            # A process with both kinds of context is listed twice with the same figure.
            found[int(proc.pid)] = max(found.get(int(proc.pid), 0), int(proc.usedGpuMemory))
    return found


def torch_reserved(device: Device) -> int:
    """torch's reserved bytes on `device` for this process (imports torch)."""
    import torch

    return int(torch.cuda.memory_reserved(device.index))


def _nvml_handle(device: Device) -> tuple[Any | None, Any]:
    module = nvml()
    handles = nvml_handles()
    if module is None or handles is None or device.index is None:
        return None, None
    if device.index >= len(handles):
        return None, None
    return module, handles[device.index]


# ------------------------------------------------------------------ the simulated ledger


class Claim:
    """Bytes one process claims on a simulated device; `release()` gives them back."""

    def __init__(self, path: Path, nbytes: int) -> None:
        self.path = path
        self.nbytes = 0
        self.set(nbytes)

    def set(self, nbytes: int) -> None:
        """Claim `nbytes` in all (written atomically: a reader sees the old or the new)."""
        if nbytes < 0:
            raise ValueError("a device claim cannot be negative")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(str(nbytes))
        os.replace(tmp, self.path)
        self.nbytes = nbytes

    def grow(self, nbytes: int) -> None:
        """Claim `nbytes` more (an allocator cache that grew after a request)."""
        self.set(self.nbytes + nbytes)

    def release(self) -> None:
        """Give the bytes back (safe to call twice)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.nbytes = 0


class Ledger:
    """The claims on simulated devices, one file per claim under `root/<device>/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def claim(self, device: str, nbytes: int, owner: str = "") -> Claim:
        """A new claim of `nbytes` on `device` by this process."""
        folder = self.root / device
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            number = next(self._ids)
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in owner)[:64]
        pid = os.getpid()
        return Claim(folder / f"{pid}-{_started(pid)}-{number}-{safe}", nbytes)

    def claimed(self, device: str, pid: int | None = None) -> int:
        """Bytes claimed on `device` by `pid` (None: by every live process)."""
        folder = self.root / device
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return 0
        total = 0
        for name in names:
            owner = _owner_of(name)
            if owner is None or (pid is not None and owner[0] != pid):
                continue
            if not _alive(*owner):
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                total += int((folder / name).read_text())
        return total


def _owner_of(name: str) -> tuple[int, int] | None:
    """The pid and start time in a claim's file name (None for anything else)."""
    if name.endswith(".tmp"):
        return None
    parts = name.split("-", 2)
    if len(parts) < 3 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def _started(pid: int) -> int:
    """When process `pid` started (clock ticks since boot, from /proc; 0 where unknown), so
    a claim left by a dead process is not counted for a new one that reuses its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else 0


def _alive(pid: int, started: int) -> bool:
    """Whether the process that made a claim still runs (the same pid, started then)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started == 0 or _started(pid) in (0, started)


def ledger_root() -> Path:
    """Where simulated claims live: $MODEL_REGISTRY_DEVICE_LEDGER, else a folder per user
    under the temporary directory."""
    configured = os.environ.get(LEDGER_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"model-registry-devices-{os.getuid()}"


_ledgers: dict[Path, Ledger] = {}
_ledgers_lock = threading.Lock()


def ledger() -> Ledger:
    """The ledger at `ledger_root()` (one object per folder in this process)."""
    root = ledger_root()
    with _ledgers_lock:
        if root not in _ledgers:
            _ledgers[root] = Ledger(root)
        return _ledgers[root]
