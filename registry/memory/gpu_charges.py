"""What models really hold on their GPUs, after the load has set their charge
(registry/placement.measured_charge); the room (registry/memory/making_room.py) writes what
these measure into the budgets:

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

from registry.loaders.interface import worker_of
from registry.memory.devices import Device, is_gpu

if TYPE_CHECKING:
    from registry.loaders import Model
    from registry.memory.device_budgets import DeviceBudgets
    from registry.slot import Slot

log = logging.getLogger("registry")


def gpu_bytes_now(devices: Mapping[str, Device], model: Model, device: str) -> int | None:
    """What `model` holds on GPU `device` now: its worker's footprint there, or the bytes a
    thread model reports (None where neither can be told)."""
    from registry.memory.device_usage import process_bytes

    worker = worker_of(model)
    if worker is not None:
        if worker.pid is None:
            return None
        return process_bytes(devices[device], worker.pid)
    reported = getattr(model, "device_bytes", None)
    return reported if isinstance(reported, int) else None


def server_overhead(
    budgets: DeviceBudgets[Slot], devices: Mapping[str, Device], home: str
) -> int | None:
    """The server's own bytes on GPU `home`, less what its thread models there are charged:
    the device's fixed overhead (None where it cannot be told)."""
    from registry.memory.device_usage import process_bytes

    mine = process_bytes(devices[home], os.getpid())
    if mine is None:
        return None
    budget = budgets.budget(home)
    charged = sum(
        budget.size_of(s)
        for s in budget.keys_lru_first()
        if budgets.home(s) == home and worker_of(s.model) is None
    )
    overhead = max(0, mine - charged)
    log.info("the server's own footprint on %s is %d bytes: its fixed overhead", home, overhead)
    return overhead


def left_on_gpu(devices: Mapping[str, Device], model: object, device: str | None) -> int | None:
    """After an unload: what the model's worker still holds on its GPU (0 expected: it has
    ended); None for a thread model or a host model (the server's process keeps running)."""
    worker = worker_of(model)
    if device is None or not is_gpu(device) or worker is None:
        return None
    from registry.memory.device_usage import process_bytes

    if worker.pid is None:
        return None
    left = process_bytes(devices[device], worker.pid)
    if left:
        log.warning(
            "the worker (pid %s) still holds %d bytes on %s after its unload",
            worker.pid,
            left,
            device,
        )
    return left
