"""A byte budget per device: the host (`cpu`) and each GPU (`cuda:N`).

Each device has its own `ByteBudget` (registry/memory/budget.py, unchanged), so each keeps the
contract "the tracked total never exceeds the limit" on its own. A model has one home
device (where it runs, or, offloaded, the host that keeps it) and may also hold host bytes
while it runs on a GPU (its host-side part); `reserve()` takes both at once or neither.
Victims for room on a device are only models whose home is that device: a load never
evicts a model on another device.

Budgets come from `server.memory_budget`: a size (the host's, as always) or a mapping
`{cpu: 2GiB, cuda: 80%, cuda:1: 10GiB}` where `cuda` applies to every GPU and `cuda:N`
to one; a percentage is of that device's total memory. A GPU without an entry gets
`DEFAULT_GPU_SHARE` of its total (see its comment). A device's fixed overhead (the
server's own CUDA context, measured once) is taken off the bytes models may hold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from registry.memory.budget import ByteBudget
from registry.memory.devices import CPU, Device, DeviceRoom, Placement, is_gpu, place
from registry.memory.policy import Policy
from registry.units import format_bytes, parse_size

K = TypeVar("K", bound=Hashable)
BUDGET_KEY = re.compile(r"^cuda(:\d+)?$")  # a GPU key of memory_budget's mapping

# 90% of a GPU's memory by default. The charge of each model already includes its worker's
# whole footprint there (CUDA context, allocator cache) and the server's context is a fixed
# overhead inside the budget, so the 10% left is for what no one is charged for: the
# allocator's fragmentation between measurements, cuBLAS/cuDNN workspaces that grow on a
# first call of a new shape, and the driver's own reservations. Less (80%) wastes gigabytes
# on a large GPU; more (95%) leaves under 500 MiB on an 8 GiB card, about one CUDA context.
DEFAULT_GPU_SHARE = 0.9


@dataclass(frozen=True)
class Share:
    """A budget as written: a number of bytes, or a percentage of the device's memory."""

    nbytes: int | None = None
    percent: float | None = None

    def resolve(self, total: int) -> int:
        """The bytes this share is of a device holding `total` bytes."""
        if self.nbytes is not None:
            return self.nbytes
        assert self.percent is not None
        return int(total * self.percent / 100)

    def describe(self, total: int) -> str:
        """For messages: `7.2 GB (90% of 8.0 GB)` or `10.0 GB`."""
        if self.percent is None:
            return format_bytes(self.resolve(total))
        return f"{format_bytes(self.resolve(total))} ({self.percent:g}% of {format_bytes(total)})"


DEFAULT_GPU = Share(percent=DEFAULT_GPU_SHARE * 100)


def parse_share(value: object) -> Share:
    """`2GiB`, `10MB`, 123 or `80%` as a Share (ValueError with what to write otherwise)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        text = value.strip()[:-1]
        try:
            percent = float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage such as 80%") from None
        if not 0 < percent <= 100:
            raise ValueError(f"{value!r}: a percentage of memory must be in (0, 100]")
        return Share(percent=percent)
    nbytes = parse_size(value)
    if nbytes <= 0:
        raise ValueError("a memory budget must be more than 0 bytes")
    return Share(nbytes=nbytes)


def host_budget(value: object) -> int:
    """memory_budget's host part: the value itself, or a mapping's `cpu` entry (default 50%),
    after checking every entry of the mapping."""
    if not isinstance(value, dict):
        return parse_size(value)
    problems = []
    for key, entry in value.items():
        if key != "cpu" and not BUDGET_KEY.match(str(key)):
            problems.append(
                f"{key!r} is not a device; the keys are cpu, cuda (every GPU) or cuda:N"
            )
            continue
        try:
            parse_size(entry) if key == "cpu" else parse_share(entry)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    return parse_size(value.get("cpu", "50%"))


def gpu_entries(budget: dict[Any, Any]) -> dict[str, Any]:
    """A budget mapping's valid GPU entries, as written (for the schema's device_budgets)."""
    entries = {}
    for key, value in budget.items():
        if key == "cpu" or not BUDGET_KEY.match(str(key)):
            continue
        try:
            parse_share(value)
        except ValueError:
            continue  # reported once, by memory_budget's own validator
        entries[str(key)] = value
    return entries


def gpu_share(device: str, shares: Mapping[str, Share]) -> tuple[Share, str]:
    """The share GPU `device` gets, and the key it came from (`cuda:N`, `cuda`, default)."""
    if device in shares:
        return shares[device], device
    if "cuda" in shares:
        return shares["cuda"], "cuda"
    return DEFAULT_GPU, "default"


def resolve_limits(
    host_budget: int, shares: Mapping[str, Share], devices: Sequence[Device]
) -> dict[str, int]:
    """Each present device's budget in bytes: the host's is `host_budget`; a GPU's is its
    entry in `shares` (`cuda:N`, else `cuda`, else the default) of its total memory."""
    limits = {CPU: host_budget}
    for device in devices:
        if is_gpu(device.name):
            share, _ = gpu_share(device.name, shares)
            limits[device.name] = max(1, share.resolve(device.total))
    return limits


@dataclass(frozen=True)
class DeviceTotals:
    """One device's figures for the views."""

    device: str
    budget: int  # the whole budget, the fixed overhead included
    overhead: int  # bytes no model is charged for (the server's CUDA context)
    used: int  # bytes models hold or have reserved
    free: int  # bytes a load can reserve without evicting
    models: int  # models whose home is this device


def _any(key: object) -> bool:
    return True


def _one_second(key: object) -> float:
    return 1.0


class DeviceBudgets(Generic[K]):
    """A ByteBudget per device; a key's home device and its bytes on each device."""

    def __init__(
        self,
        limits: Mapping[str, int],
        policy: Policy = "lru",
        reload_seconds: Callable[[K], float] = _one_second,
    ) -> None:
        if CPU not in limits:
            raise ValueError("the host (cpu) needs a budget")
        self._policy = policy
        self._reload_seconds = reload_seconds
        self._budgets: dict[str, ByteBudget[K]] = {}
        self._limits: dict[str, int] = {}
        self._overheads: dict[str, int] = {}
        self._homes: dict[K, str] = {}
        for device, limit in limits.items():
            self.add_device(device, limit)

    # ------------------------------------------------------------------- devices

    @property
    def devices(self) -> list[str]:
        """The devices with a budget, the host first."""
        return list(self._budgets)

    def add_device(self, device: str, limit: int) -> None:
        """A device with budget `limit` (ValueError if it has one already)."""
        if device in self._budgets:
            raise ValueError(f"{device} already has a budget")
        self._budgets[device] = ByteBudget(limit, self._policy, self._reload_seconds)
        self._limits[device] = limit
        self._overheads[device] = 0

    def budget(self, device: str) -> ByteBudget[K]:
        """The device's ByteBudget (KeyError naming the devices there are)."""
        try:
            return self._budgets[device]
        except KeyError:
            raise KeyError(f"no budget for {device}; devices: {', '.join(self._budgets)}") from None

    def limit(self, device: str) -> int:
        """The device's whole budget (its fixed overhead included)."""
        self.budget(device)
        return self._limits[device]

    def overhead(self, device: str) -> int:
        """Bytes of the device's budget that no model is charged for."""
        self.budget(device)
        return self._overheads[device]

    def set_limit(self, device: str, limit: int) -> None:
        """A new budget for `device`; a lower one may leave `used` above it until evictions."""
        if limit <= 0:
            raise ValueError("a memory budget must be positive")
        self._limits[device] = limit
        self._apply(device)

    def set_overhead(self, device: str, nbytes: int) -> None:
        """The device's fixed overhead (the server's own CUDA context there, measured once).

        Models may hold the budget less the overhead (at least one byte: an overhead as
        large as the budget leaves room for nothing, which is the truth)."""
        if nbytes < 0:
            raise ValueError("an overhead cannot be negative")
        self.budget(device)
        self._overheads[device] = nbytes
        self._apply(device)

    def _apply(self, device: str) -> None:
        self.budget(device).set_limit(max(1, self._limits[device] - self._overheads[device]))

    # --------------------------------------------------------------------- keys

    def home(self, key: K) -> str | None:
        """The device `key` lives on (None when it holds nothing)."""
        return self._homes.get(key)

    def holdings(self, key: K) -> dict[str, int]:
        """Bytes `key` holds on each device it holds any on."""
        return {d: b.size_of(key) for d, b in self._budgets.items() if key in b}

    def used(self, device: str) -> int:
        """Bytes held or reserved on `device`."""
        return self.budget(device).used

    def free(self, device: str) -> int:
        """Bytes a load can reserve on `device` without evicting."""
        return self.budget(device).free

    def fits(self, device: str, nbytes: int, *, replacing: K | None = None) -> bool:
        """Whether `nbytes` more (or instead of what `replacing` holds there) fit on `device`."""
        return self.budget(device).fits(nbytes, replacing=replacing)

    def reserve(self, key: K, device: str, nbytes: int, *, host_bytes: int = 0) -> None:
        """Hold `nbytes` for `key` on `device`, its home from now on, and `host_bytes` on the
        host when `device` is a GPU; both or neither (ValueError, nothing changed).

        Reserving again replaces what the key held (a measurement replacing an estimate);
        a new home gives back what it held on the old one (an offload to the host)."""
        wanted = {device: nbytes}
        if device != CPU:
            wanted[CPU] = host_bytes
        elif host_bytes:
            raise ValueError("host_bytes is a GPU model's host part; a host model has nbytes")
        for where, amount in wanted.items():
            budget = self.budget(where)
            if amount > budget.limit:
                raise ValueError(
                    f"{format_bytes(amount)} is more than the whole budget of {where} "
                    f"({format_bytes(budget.limit)} for models)"
                )
            if not budget.fits(amount, replacing=key):
                raise ValueError(
                    f"reserving {amount} bytes on {where} would exceed its budget of {budget.limit}"
                )
        for where, budget in self._budgets.items():
            if where not in wanted and key in budget:
                budget.release(key)
        for where, amount in wanted.items():
            if amount or where == device:
                self._budgets[where].reserve(key, amount)
            else:
                self._budgets[where].release(key)
        self._homes[key] = device

    def move_home(self, key: K, device: str) -> None:
        """`key` now lives on `device` alone, whose bytes it already holds: its entries on
        the other devices go (no fit check: nothing new is reserved)."""
        assert key in self._budgets[device], "move_home needs the bytes reserved there first"
        for where, budget in self._budgets.items():
            if where != device and key in budget:
                budget.release(key)
        self._homes[key] = device

    def release(self, key: K) -> dict[str, int]:
        """Forget `key` everywhere; the bytes it held on each device."""
        self._homes.pop(key, None)
        freed = {}
        for device, budget in self._budgets.items():
            if key in budget:
                freed[device] = budget.release(key)
        return freed

    def touch(self, key: K) -> None:
        """Record a use of `key` on every device it holds bytes on."""
        for budget in self._budgets.values():
            budget.touch(key)

    def victims(
        self,
        device: str,
        nbytes: int,
        *,
        evictable: Callable[[K], bool] = _any,
        freeing: Collection[K] = (),
        replacing: K | None = None,
    ) -> list[K] | None:
        """The evictable models at home on `device`, in policy order, whose release makes
        `nbytes` fit there ([] if it fits, None if it cannot); never a model elsewhere."""

        def at_home(key: K) -> bool:
            return self._homes.get(key) == device and evictable(key)

        return self.budget(device).victims(
            nbytes, evictable=at_home, freeing=freeing, replacing=replacing
        )

    # ------------------------------------------------------------------ placement

    def room(
        self, device: str, *, evictable: Callable[[K], bool] = _any, freeing: Collection[K] = ()
    ) -> DeviceRoom:
        """What placement needs to know of `device` now."""
        budget = self.budget(device)
        soon_free = sum(budget.size_of(k) for k in freeing if k in budget)
        can_go = sum(
            budget.size_of(k)
            for k in budget.keys_lru_first()
            if k not in freeing and self._homes.get(k) == device and evictable(k)
        )
        return DeviceRoom(device, budget.limit, budget.used - soon_free, can_go)

    def place(
        self,
        candidates: Sequence[str],
        nbytes: int,
        *,
        evictable: Callable[[K], bool] = _any,
        cost_of: Callable[[K], float] = _one_second,
        freeing: Collection[K] = (),
    ) -> Placement:
        """The candidate device that takes `nbytes` with the least eviction cost: the sum
        of `cost_of` over the victims evicting there would take (registry/devices.place)."""

        def cost(device: str, need: int) -> float | None:
            chosen = self.victims(device, nbytes, evictable=evictable, freeing=freeing)
            return None if chosen is None else sum(cost_of(k) for k in chosen)

        rooms = [self.room(d, evictable=evictable, freeing=freeing) for d in candidates]
        return place(nbytes, rooms, cost)

    # --------------------------------------------------------------------- views

    def totals(self) -> list[DeviceTotals]:
        """Each device's budget, overhead, used and free bytes and how many models live there."""
        rows = []
        for device, budget in self._budgets.items():
            homed = sum(1 for home in self._homes.values() if home == device)
            rows.append(
                DeviceTotals(
                    device,
                    self._limits[device],
                    self._overheads[device],
                    budget.used,
                    budget.free,
                    homed,
                )
            )
        return rows
