"""The host-RAM tier: a model evicted from a GPU is kept in host memory, and comes back by a
copy instead of a load from disk (docs/gpus.md).

- An eviction from a GPU offloads the model instead of unloading it when `server.host_tier`
  is on, the model has the `offload`/`restore` hooks (registry/loaders/interface.py: a
  thread model; a worker process's model is unloaded as before), it is not on its way out,
  and the host budget has free room for all it holds (its GPU bytes and its host part):
  the tier never evicts a host model to take one from a GPU.
- The host room is reserved before the copy starts and the GPU bytes are released once it
  has ended, so no device's tracked total goes over its budget at any time.
- An offloaded model is at home on the host: the host's eviction policy (and its TTL, an
  admin unload, a reload that retires it, shutdown) unloads it from there. A request for
  it starts a load that reserves room on a GPU (placement, as for a load) and restores it
  by the copy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING

from registry.events import EventKind, UnloadReason
from registry.loaders.interface import can_offload
from registry.memory.devices import CPU, is_gpu
from registry.memory.placement import measured_charge
from registry.memory.sizes import measure_bytes
from registry.process.proxy import ProcessModel
from registry.slot import State
from registry.stuck_calls import dispose
from registry.threads import run_in_thread
from registry.units import format_bytes, format_duration

if TYPE_CHECKING:
    from registry.abandoned import AbandonedThread
    from registry.lifecycle import Lifecycle
    from registry.loaders import Model
    from registry.memory.making_room import Room
    from registry.memory.placement import Charge
    from registry.slot import Slot

log = logging.getLogger("registry")


def may_offload(life: Room, slot: Slot) -> bool:
    """Whether evicting `slot` keeps it in host memory instead of unloading it."""
    home = life.budgets.home(slot)
    model = slot.model
    if not life.settings.host_tier or home is None or not is_gpu(home):
        return False
    if slot.state is not State.LOADED or slot.retirement.due or life.closing:
        return False
    if model is None or isinstance(model, ProcessModel) or not can_offload(model):
        return False
    total = sum(life.budgets.holdings(slot).values())
    return life.budgets.fits(CPU, total, replacing=slot)


def start_offload(life: Room, slot: Slot, why: str, reason: UnloadReason, purpose: str) -> None:
    """Copy an evicted GPU model to host memory (may_offload said yes): the host room is
    reserved now, the GPU bytes are released once the copy has ended."""
    budgets = life.budgets
    held = budgets.holdings(slot)
    gpu = budgets.home(slot)
    assert gpu is not None
    total = sum(held.values())
    budgets.reserve(slot, gpu, held.get(gpu, 0), host_bytes=total)
    life.record_peak()
    task = life.spawn(
        _offload(life, slot, gpu, total, why, reason, purpose), name=f"offload {slot.name}"
    )
    slot.begin_offload(task)


async def _offload(
    life: Room, slot: Slot, gpu: str, total: int, why: str, reason: UnloadReason, purpose: str
) -> None:
    started = time.monotonic()
    model = slot.model
    assert model is not None
    try:
        await run_in_thread(model.offload, name=f"offload-{slot.name}")  # type: ignore[attr-defined]
    except Exception:
        log.exception("could not offload %s to host memory; unloading it", slot.name)
        slot.offload_failed()
        life.start_unload(slot, why, reason=reason, purpose=purpose)
        return
    life.budgets.move_home(slot, CPU)  # the GPU's bytes go; the host's were reserved
    slot.offloaded()
    life.stats.of(slot.name).record_offload()
    life.notify()
    seconds = time.monotonic() - started
    life.events.emit(
        EventKind.OFFLOADED,
        slot.name,
        reason=reason.value,
        bytes=total,
        seconds=seconds,
        device=CPU,
        from_device=gpu,
    )
    log.info(
        "offloaded %s from %s to host memory (%s, in %s, %s) %s",
        slot.name,
        gpu,
        format_bytes(total),
        format_duration(seconds),
        why,
        purpose,
    )
    if life.closing:
        life.start_unload(slot, "shutdown", reason=UnloadReason.SHUTDOWN, quiet=True)
    else:
        life.unload_when_idle(slot)  # retired, or an unload was asked for meanwhile


def _restore_blocking(model: Model, device: str) -> int | None:
    model.restore(device)  # type: ignore[attr-defined]
    return measure_bytes(model)


async def restore(life: Lifecycle, slot: Slot, device: str) -> tuple[Model, int | None, float]:
    """Copy an offloaded model back to `device` (its room there is reserved): the model,
    its measured host size and the seconds the copy took. If the copy fails, the model is
    closed and its bytes released; if it is stopped (model replaced or removed, shutdown),
    the slot lets go of it at once but its bytes stay reserved until the copy's thread
    ends, which then closes it (as for a load the registry stops waiting for)."""
    model = slot.model
    assert model is not None
    started = time.monotonic()
    records: list[AbandonedThread] = []
    job = run_in_thread(
        functools.partial(_restore_blocking, model, device),
        name=f"restore-{slot.name}",
        on_orphan=lambda _: dispose((model, None)),  # stopped: closed once the copy ends
        on_exit=lambda: life.reclaim(records[0]) if records else None,
    )
    timeout = slot.spec.load_timeout or life.settings.load_timeout
    try:
        try:  # a stopped (or timed-out) restore leaves the copy running
            size = await asyncio.wait_for(asyncio.shield(job), timeout)
        except TimeoutError:
            raise TimeoutError(f"restore timed out after {timeout:g}s (load_timeout)") from None
    except BaseException:
        _, thread = slot.drop_model()
        life.pool.retire(thread)
        if job.done():  # the copy raised: its thread is over, close the model now
            life.budgets.release(slot)
            await run_in_thread(functools.partial(dispose, (model, None)), name="dispose")
        else:
            job.cancel()  # the copy's result comes as an orphan: closed in its thread
            records.append(life.abandoned.add(slot, "restore", "stopped during its restore"))
        raise
    return model, size, time.monotonic() - started


async def restore_load(life: Lifecycle, slot: Slot, charge: Charge) -> None:
    """The load of an offloaded model, once its room is reserved (`charge`): the copy back,
    then its measured charge in place of the estimate (closed if that finds no room)."""
    model, size, seconds = await restore(life, slot, charge.placed or charge.device)
    measured = measured_charge(model, charge, size or slot.size_bytes or 0, life.devices)
    try:
        await life.settle_size(slot, model, measured)  # closes the model if no room
    except BaseException:
        forget(life, slot)
        raise
    restored(life, slot, seconds)
    life.unload_when_idle(slot)


def let_go(life: Room, slot: Slot) -> None:
    """A restore that failed or was stopped before the model served again: a model still
    held is closed (in a thread) and its bytes released; nothing to do for a plain load."""
    model = slot.model
    if model is None or slot.state is State.LOADED:
        return
    forget(life, slot)
    job = run_in_thread(functools.partial(dispose, (model, None)), name=f"dispose-{slot.name}")
    job.add_done_callback(lambda done: done.cancelled() or done.exception())


def forget(life: Room, slot: Slot) -> None:
    """A held model that failed or was stopped: off the slot, its bytes released, its
    thread retired (the caller closes the model)."""
    _, thread = slot.drop_model()
    life.pool.retire(thread)
    life.budgets.release(slot)


def restored(life: Room, slot: Slot, seconds: float) -> None:
    """The copy back to a GPU is done: the model serves again."""
    slot.restored(seconds)
    life.budgets.touch(slot)
    life.stats.of(slot.name).record_restore(seconds)
    home = life.budgets.home(slot)
    log.info("restored %s to %s from host memory in %s", slot.name, home, format_duration(seconds))
    life.events.emit(
        EventKind.RESTORED, slot.name, bytes=slot.size_bytes, seconds=seconds, device=home
    )
