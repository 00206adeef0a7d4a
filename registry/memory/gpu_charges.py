"""Following what models really hold on their GPUs, after the load has set their charge
(registry/placement.measured_charge):

- after each request, a process model's charge on its GPU follows its worker's whole
  footprint there (registry.memory.device_usage.process_bytes: NVML, torch's counters, or the
  simulated ledger), as its host charge follows `worker_private_bytes`; a thread model's
  follows the `device_bytes` it reports (the fake's allocator cache). Growth that does not
  fit evicts idle models on that GPU (never elsewhere);
- the server's own footprint on a GPU (its CUDA context, allocator cache), measured once
  after its first thread model loads there, less what its thread models are charged, is
  that device's fixed overhead (`DeviceBudgets.set_overhead`): counted once, for no model;
- after an unload, what the model's process still holds on its GPU is measured: a worker's
  must be gone (it has ended); it is logged when it is not, and the unload's event says it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from registry.memory.devices import Device, is_gpu
from registry.process.proxy import ProcessModel

if TYPE_CHECKING:
    from registry.lifecycle import Lifecycle
    from registry.loaders import Model
    from registry.slot import Slot

log = logging.getLogger("registry")


def gpu_bytes_now(life: Lifecycle, model: Model, device: str) -> int | None:
    """What `model` holds on GPU `device` now: its worker's footprint there, or the bytes a
    thread model reports (None where neither can be told)."""
    from registry.memory.device_usage import process_bytes

    if isinstance(model, ProcessModel):
        if model.pid is None:
            return None
        return process_bytes(life.devices[device], model.pid)
    reported = getattr(model, "device_bytes", None)
    return reported if isinstance(reported, int) else None


def follow_gpu(life: Lifecycle, slot: Slot) -> None:
    """After a request: the model's GPU charge follows what it holds there, making room on
    that GPU for growth (idle models there are evicted; nothing elsewhere)."""
    home = life.budgets.home(slot)
    model = slot.model
    if home is None or not is_gpu(home) or model is None:
        return
    held = gpu_bytes_now(life, model, home)
    budget = life.budgets.budget(home)
    if held is None or held == budget.size_of(slot):
        return
    budget.follow(slot, held)  # the measured truth, even before room is made for it
    slot.measured(held)
    if budget.used > budget.limit:
        life.make_room_for(slot, held, home)


def measure_overhead(life: Lifecycle, slot: Slot) -> None:
    """Once per GPU, after the first thread model loaded there: the server's own bytes on
    it, less what its thread models are charged, become the device's fixed overhead."""
    home = life.budgets.home(slot)
    if home is None or not is_gpu(home) or isinstance(slot.model, ProcessModel):
        return
    if home in life.overhead_measured:
        return
    from registry.memory.device_usage import process_bytes

    life.overhead_measured.add(home)
    mine = process_bytes(life.devices[home], os.getpid())
    if mine is None:
        return
    budget = life.budgets.budget(home)
    charged = sum(
        budget.size_of(s)
        for s in budget.keys_lru_first()
        if life.budgets.home(s) == home and not isinstance(s.model, ProcessModel)
    )
    overhead = max(0, mine - charged)
    life.budgets.set_overhead(home, overhead)
    log.info("the server's own footprint on %s is %d bytes: its fixed overhead", home, overhead)
    life.enforce_limit()


def left_on_gpu(devices: Mapping[str, Device], model: object, device: str | None) -> int | None:
    """After an unload: what the model's worker still holds on its GPU (0 expected: it has
    ended); None for a thread model or a host model (the server's process keeps running)."""
    if device is None or not is_gpu(device) or not isinstance(model, ProcessModel):
        return None
    from registry.memory.device_usage import process_bytes

    if model.pid is None:
        return None
    left = process_bytes(devices[device], model.pid)
    if left:
        log.warning(
            "the worker (pid %s) still holds %d bytes on %s after its unload",
            model.pid,
            left,
            device,
        )
    return left
