"""Devices: their names, a model's device spec, the devices present, and placement.

- Names: `cpu` (the host) and `cuda:N` (GPU N as CUDA numbers it in this process); `mps`
  (Apple's GPU) is accepted as today and counts against the host's budget (unified memory).
- A model's `device:` is one of `cpu`, `cuda` (any GPU), `cuda:N` (pinned), `auto` (any GPU,
  else the host), `mps`, or a list of `cpu`/`cuda`/`cuda:N` that restricts placement to them.
- Discovery: the host (its physical memory) and the GPUs with their total memory: simulated
  ones from `server.simulated_devices` (so tests run on a CPU), else real ones through NVML
  (the `nvidia-ml-py` package, imported lazily and optional), else torch's counters. Nothing
  here imports torch unless a model asks for a GPU.
- Placement: `place()` picks, among a model's candidate devices, the one that can take it with
  the least eviction cost (a pure function of the rooms it is given).

Per-process memory on a device is `registry/memory/device_usage.py`; budgets per device are
`registry/memory/device_budgets.py`.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from registry.units import total_memory

CPU = "cpu"
MPS = "mps"
DEVICE_PATTERN = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")
GPU_NAME = re.compile(r"^cuda:(\d+)$")
LIST_ENTRY = re.compile(r"^(cpu|cuda(:\d+)?)$")

DeviceKind = Literal["host", "simulated", "nvml", "torch"]


def is_gpu(name: str) -> bool:
    """Whether `name` is one GPU (`cuda:N`)."""
    return GPU_NAME.match(name) is not None


def gpu_index(name: str) -> int:
    """N of `cuda:N` (ValueError for any other name)."""
    match = GPU_NAME.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a GPU name such as cuda:0")
    return int(match.group(1))


def budget_device(name: str) -> str:
    """The device whose budget a model on `name` spends: `mps` shares the host's memory."""
    return CPU if name == MPS else name


# ----------------------------------------------------------------------- device specs


@dataclass(frozen=True)
class DeviceSpec:
    """A model's `device:` entry, parsed: the choices it allows, in the order written."""

    choices: tuple[str, ...]

    @property
    def wants_gpu(self) -> bool:
        """Whether a GPU may be chosen (then discovery must look for GPUs)."""
        return any(choice not in (CPU, MPS) for choice in self.choices)

    @property
    def pinned(self) -> str | None:
        """The one device this spec allows whatever is present (cpu, mps, cuda:N), else None."""
        if len(self.choices) == 1 and self.choices[0] not in ("cuda", "auto"):
            return self.choices[0]
        return None

    def candidates(self, present: Sequence[str]) -> list[str]:
        """The devices among `present` a model may be placed on, in preference order.

        `cuda` is every GPU present, `auto` every GPU then the host; a pinned `cuda:N`
        that is not present gives nothing (the caller says which devices exist).
        """
        gpus = [name for name in present if is_gpu(name)]
        found: list[str] = []
        for choice in self.choices:
            if choice == "cuda":
                names = gpus
            elif choice == "auto":
                names = [*gpus, CPU]
            elif choice == MPS:
                names = [MPS]
            else:
                names = [choice] if choice in present else []
            found += [name for name in names if name not in found]
        return found

    def first_choice(self) -> str:
        """What a loader uses until placement is wired in: the first choice (`cuda` = GPU 0)."""
        return self.choices[0]


def parse_device_spec(value: str | Sequence[str]) -> DeviceSpec:
    """A `device:` value (a name or a list of names) as a DeviceSpec; ValueError if wrong."""
    if isinstance(value, str):
        if not DEVICE_PATTERN.match(value):
            raise ValueError(f"device {value!r} must be cpu, cuda, cuda:N, mps or auto")
        return DeviceSpec((value,))
    entries = list(value)
    if not entries:
        raise ValueError("a device list must name at least one of cpu, cuda or cuda:N")
    for entry in entries:
        if not isinstance(entry, str) or not LIST_ENTRY.match(entry):
            raise ValueError(
                f"device list entry {entry!r} must be cpu, cuda or cuda:N "
                "(auto and mps stand alone)"
            )
    duplicates = sorted({entry for entry in entries if entries.count(entry) > 1})
    if duplicates:
        raise ValueError(f"device list names {', '.join(duplicates)} more than once")
    return DeviceSpec(tuple(entries))


def device_text(value: str | Sequence[str]) -> str:
    """A `device:` value as one word for views and events: a list as `cuda:1,cuda:0`."""
    return value if isinstance(value, str) else ",".join(value)


def device_value(value: object) -> str | list[str]:
    """A device name or a list of names (their spelling is checked with the model)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(
        "device must be cpu, cuda, cuda:N, mps or auto, or a list such as [cuda:0, cuda:1]"
    )


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Device:
    """One device present: its name, its total memory and where that figure comes from."""

    name: str
    total: int
    kind: DeviceKind
    label: str = ""

    @property
    def index(self) -> int | None:
        """N for `cuda:N`, None for the host."""
        return gpu_index(self.name) if is_gpu(self.name) else None


def host_device() -> Device:
    """The host: its physical memory."""
    return Device(CPU, total_memory(), "host", "host memory")


def simulated_gpus(sizes: Mapping[str, int]) -> list[Device]:
    """GPUs from `server.simulated_devices` ({cuda:0: 8GiB, ...}), in index order."""
    return [
        Device(name, int(sizes[name]), "simulated", "simulated GPU")
        for name in sorted(sizes, key=gpu_index)
    ]


def check_simulated(sizes: dict[str, int]) -> dict[str, int]:
    """`server.simulated_devices` checked: GPU names with more than 0 bytes each."""
    for name, size in sizes.items():
        if not GPU_NAME.match(name):
            raise ValueError(f"{name!r} is not a GPU name; simulated devices are cuda:0, cuda:1...")
        if size <= 0:
            raise ValueError(f"{name}: a simulated GPU needs more than 0 bytes of memory")
    return sizes


def discover(simulated: Mapping[str, int], *, gpus: bool) -> list[Device]:
    """The host, then the GPUs: simulated ones if any are configured (real ones are then
    ignored), else, when `gpus` (some model asks for a GPU), NVML's, else torch's."""
    found = [host_device()]
    if simulated:
        return found + simulated_gpus(simulated)
    if not gpus:
        return found
    real = nvml_gpus()
    if real is None:
        real = torch_gpus()
    return found + list(real)


def visible_indices(env: str | None, uuids: Sequence[str]) -> list[int]:
    """The NVML indices CUDA numbers 0, 1, ... under CUDA_VISIBLE_DEVICES=`env`.

    Unset: every GPU. Entries are indices or (prefixes of) UUIDs such as `GPU-8f3...`; as
    CUDA does, the list stops at the first entry that names no GPU, and a GPU named twice
    makes the list empty. (NVML numbers GPUs in PCI bus order; CUDA does too when
    CUDA_DEVICE_ORDER=PCI_BUS_ID, which multi-GPU hosts should set.)
    """
    if env is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for raw in env.split(","):
        entry = raw.strip()
        index: int | None = None
        if entry.isdigit():
            index = int(entry) if int(entry) < len(uuids) else None
        elif entry:
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
            index = matches[0] if len(matches) == 1 else None
        if index is None:
            break
        if index in chosen:
            return []
        chosen.append(index)
    return chosen


def nvml() -> Any | None:
    """The `pynvml` module (from nvidia-ml-py), initialised; None where it is missing or
    there is no NVIDIA driver."""
    return _nvml_module()


@cache
def _nvml_module() -> Any | None:
    try:
        module = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        module.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable GPU
        return None
    return module


def nvml_handles() -> list[Any] | None:
    """NVML's device handles in CUDA's numbering (CUDA_VISIBLE_DEVICES applied); None
    without NVML."""
    module = nvml()
    if module is None:
        return None
    try:
        count = int(module.nvmlDeviceGetCount())
        handles = [module.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids = [_text(module.nvmlDeviceGetUUID(handle)) for handle in handles]
    except Exception:
        return None
    return [handles[i] for i in visible_indices(os.environ.get("CUDA_VISIBLE_DEVICES"), uuids)]


def nvml_gpus() -> list[Device] | None:
    """The GPUs NVML sees, in CUDA's numbering; None without NVML."""
    module = nvml()
    handles = nvml_handles()
    if module is None or handles is None:
        return None
    devices = []
    for index, handle in enumerate(handles):
        info = module.nvmlDeviceGetMemoryInfo(handle)
        label = _text(module.nvmlDeviceGetName(handle))
        devices.append(Device(f"cuda:{index}", int(info.total), "nvml", label))
    return devices


def torch_gpus() -> list[Device]:
    """The GPUs torch sees (imports torch: only called when a model asks for a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(Device(f"cuda:{index}", int(props.total_memory), "torch", str(props.name)))
    return devices


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class DeviceRoom:
    """What placement needs to know of one candidate device."""

    device: str
    limit: int  # bytes models may hold there (its budget less its fixed overhead)
    used: int  # bytes held or reserved there now
    evictable: int  # bytes that evicting every evictable model there would free


Outcome = Literal["fits", "evict", "wait", "too_large"]


@dataclass(frozen=True)
class Placement:
    """Where a model goes: `fits` (no eviction), `evict` (after evicting at `cost`), `wait`
    (no candidate has room now, but one could once its models become evictable), or
    `too_large` (larger than every candidate's whole budget). `device` is None for the last
    two."""

    device: str | None
    outcome: Outcome
    cost: float = 0.0


EvictionCost = Callable[[str, int], float | None]


def place(nbytes: int, rooms: Sequence[DeviceRoom], cost: EvictionCost) -> Placement:
    """The candidate that can take `nbytes` with the least eviction cost.

    `cost(device, need)` is what evicting `need` bytes' worth of models on `device` costs
    (None where it cannot be done). Ties go to the device with the most room left after
    the load (models spread over the GPUs), then to the one listed first. Only the rooms
    given are considered: a load never evicts on a device that is not its candidate.
    """
    best: tuple[float, int, int] | None = None
    best_room: DeviceRoom | None = None
    could_wait = False
    for order, room in enumerate(rooms):
        if nbytes > room.limit:
            continue
        could_wait = True
        need = room.used + nbytes - room.limit
        if need <= 0:
            price: float | None = 0.0
        elif need > room.evictable:
            price = None
        else:
            price = cost(room.device, need)
        if price is None:
            continue
        rank = (price, -(room.limit - room.used - nbytes), order)
        if best is None or rank < best:
            best, best_room = rank, room
    if best is None or best_room is None:
        return Placement(None, "wait" if could_wait else "too_large")
    need = best_room.used + nbytes - best_room.limit
    return Placement(best_room.device, "fits" if need <= 0 else "evict", best[0])
