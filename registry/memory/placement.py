"""Where a load goes and what it is charged there: its device, its bytes on that device's
budget and, on a GPU, the bytes its host-side part holds in the host's budget.

- A model's candidates are the devices present that its `device:` allows, in its order
  (registry/devices.DeviceSpec.candidates). On GPUs, `DeviceBudgets.place` picks the one
  that takes it with the least eviction cost; a model that may also run on the host (`auto`,
  a list with `cpu`) goes there when no GPU can take it now.
- A model larger than every candidate GPU's budget is ModelTooLarge naming the device; one
  for which no GPU has room now waits on the first GPU whose budget could hold it (the
  lifecycle's capacity_wait loop, then CapacityExceeded naming that device).
- A model none of whose devices is present (`device: cuda` on a host without a GPU) is
  charged on the host and its loader decides (it fails there, as it always has).
- The charge before the load is an estimate: on a GPU the loader's weights (the fake: its
  `device_bytes`, and its `size` on the host). After the load it is measured: a worker's
  whole footprint on its GPU (registry.memory.device_usage.process_bytes: NVML, torch, or the
  simulated ledger) and its private host memory; a thread model's `device_bytes` where it
  reports them (the fake), else its tensor bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.errors import ModelTooLarge
from registry.loaders import estimate_bytes
from registry.loaders.interface import worker_of
from registry.memory.devices import CPU, Device, budget_device, is_gpu
from registry.threads import run_in_thread

if TYPE_CHECKING:
    from registry.loaders import Model
    from registry.memory.device_budgets import DeviceBudgets
    from registry.slot import Slot


@dataclass(frozen=True)
class Charge:
    """What a load reserves: `nbytes` on `device` (a budget's device: cpu or cuda:N) and
    `host_bytes` on the host when `device` is a GPU; `placed` is the device the loader is
    told (cpu, mps, cuda:N; None: the loader picks from the entry, as before placement)."""

    device: str
    nbytes: int
    host_bytes: int = 0
    placed: str | None = None

    @property
    def on_gpu(self) -> bool:
        """Whether the model goes to a GPU."""
        return is_gpu(self.device)


def gpu_estimate(slot: Slot, host_estimate: int) -> tuple[int, int]:
    """(bytes on its GPU, bytes on the host) a model will hold once loaded on a GPU: the
    fake's `device_bytes` and `size`; any other loader's weights, all on the GPU."""
    if slot.spec.loader == "fake":
        from registry.loaders import fake

        return fake.estimate_device_bytes(slot.spec, slot.source), host_estimate
    return host_estimate, 0


async def place_load(
    slot: Slot,
    budgets: DeviceBudgets[Slot],
    present: Collection[str],
    *,
    cost_of: Callable[[Slot], float],
    freeing: Collection[Slot],
) -> Charge:
    """Where `slot`'s load goes and what it reserves: its size measured on an earlier load
    of the same files (host models), else its loader's estimate (run in a thread)."""
    gpu = slot.spec.device_spec.wants_gpu and len(present) > 1
    measured = slot.size_bytes is not None and not gpu
    if slot.size_bytes is not None and not gpu:
        need = slot.size_bytes
    else:
        estimate = functools.partial(estimate_bytes, slot.spec, slot.source)
        slot.estimated(await run_in_thread(estimate, name="estimate"))
        need = slot.estimate or 0
    evictable: Callable[[Slot], bool] = lambda s: s.evictable  # noqa: E731
    return plan(
        slot,
        need,
        budgets,
        present,
        evictable=evictable,
        cost_of=cost_of,
        freeing=freeing,
        measured=measured,
    )


def plan(
    slot: Slot,
    host_estimate: int,
    budgets: DeviceBudgets[Slot],
    present: Collection[str],
    *,
    evictable: Callable[[Slot], bool],
    cost_of: Callable[[Slot], float],
    freeing: Collection[Slot],
    measured: bool = False,
) -> Charge:
    """Where `slot`'s load goes and what it reserves (ModelTooLarge where it cannot fit)."""
    candidates = slot.spec.device_spec.candidates(list(present))
    gpus = [name for name in candidates if is_gpu(name)]
    hosts = [name for name in candidates if not is_gpu(name)]
    if gpus:
        on_gpu, on_host = gpu_estimate(slot, host_estimate)
        placement = budgets.place(
            gpus, on_gpu, evictable=evictable, cost_of=cost_of, freeing=freeing
        )
        if placement.device is not None and budgets.fits(CPU, on_host, replacing=slot):
            return Charge(placement.device, on_gpu, on_host, placement.device)
        if not hosts:
            room = [gpu for gpu in gpus if on_gpu <= budgets.budget(gpu).limit]
            if not room:
                largest = max(gpus, key=lambda gpu: budgets.budget(gpu).limit)
                where = gpus[0] if len(gpus) == 1 else largest
                limit = budgets.budget(where).limit
                raise ModelTooLarge(slot.name, on_gpu, limit, device=where)
            return Charge(placement.device or room[0], on_gpu, on_host, placement.device or room[0])
    placed = hosts[0] if hosts else None
    limit = budgets.budget(CPU).limit
    if host_estimate > limit:
        raise ModelTooLarge(slot.name, host_estimate, limit, measured=measured)
    return Charge(budget_device(placed or CPU), host_estimate, 0, placed)


def measured_charge(
    model: Model, charge: Charge, measured: int, devices: Mapping[str, Device]
) -> Charge:
    """The charge of a loaded model from what it really holds (`measured`: its host size,
    a worker's private memory or a thread model's measured bytes)."""
    if not charge.on_gpu:
        return Charge(charge.device, measured, 0, charge.placed)
    device = devices[charge.device]
    worker = worker_of(model)
    if worker is not None:
        from registry.memory.device_usage import process_bytes

        on_gpu = None if worker.pid is None else process_bytes(device, worker.pid)
        gpu = charge.nbytes if on_gpu is None else on_gpu
        return Charge(charge.device, gpu, measured, charge.placed)
    reported = getattr(model, "device_bytes", None)
    if isinstance(reported, int):  # the fake: its claim on the GPU, its ballast on the host
        return Charge(charge.device, reported, measured, charge.placed)
    return Charge(charge.device, measured, 0, charge.placed)  # tensors, all on the GPU
