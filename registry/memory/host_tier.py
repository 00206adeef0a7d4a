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

The room (registry/memory/making_room.py) starts an offload and a load's restore; these
functions write the budgets only through its `Holdings` (registry/memory/holdings.py), and
know the room only as the `TierRoom` below.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from registry.events import EventKind, UnloadReason
from registry.loaders.interface import can_offload, worker_of
from registry.memory.devices import CPU, is_gpu
from registry.memory.placement import measured_charge
from registry.memory.sizes import measure_bytes
from registry.model_calls import dispose
from registry.slot import State
from registry.threads import run_in_thread
from registry.units import format_bytes, format_duration

if TYPE_CHECKING:
    from registry.abandoned import AbandonedThread
    from registry.config.schema import ServerSettings
    from registry.events import EventBus
    from registry.loaders import Model
    from registry.memory.devices import Device
    from registry.memory.holdings import Holdings
    from registry.memory.placement import Charge
    from registry.slot import Slot
    from registry.stats import Stats

log = logging.getLogger("registry")


class TierRoom(Protocol):
    """What the host tier asks of the room that owns the budgets (making_room.Room)."""

    @property
    def settings(self) -> ServerSettings: ...

    @property
    def devices(self) -> Mapping[str, Device]: ...

    @property
    def holdings(self) -> Holdings: ...

    @property
    def closing(self) -> bool: ...

    @property
    def events(self) -> EventBus: ...

    @property
    def stats(self) -> Stats: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]: ...

    def notify(self) -> None: ...

    def start_unload(
        self,
        slot: Slot,
        why: str,
        *,
        reason: UnloadReason,
        quiet: bool = ...,
        purpose: str | None = ...,
    ) -> None: ...

    def unload_when_idle(self, slot: Slot) -> None: ...

    async def settle_size(self, slot: Slot, model: Model, charge: Charge) -> None: ...


def may_offload(room: TierRoom, slot: Slot) -> bool:
    """Whether evicting `slot` keeps it in host memory instead of unloading it."""
    budgets = room.holdings.budgets
    home = budgets.home(slot)
    model = slot.model
    if not room.settings.host_tier or home is None or not is_gpu(home):
        return False
    if slot.state is not State.LOADED or slot.retirement.due or room.closing:
        return False
    if model is None or worker_of(model) is not None or not can_offload(model):
        return False
    total = sum(budgets.holdings(slot).values())
    return budgets.fits(CPU, total, replacing=slot)


def start_offload(room: TierRoom, slot: Slot, why: str, reason: UnloadReason, purpose: str) -> None:
    """Copy an evicted GPU model to host memory (may_offload said yes): the host room is
    reserved now, the GPU bytes are released once the copy has ended."""
    holdings = room.holdings
    held = holdings.budgets.holdings(slot)
    gpu = holdings.budgets.home(slot)
    assert gpu is not None
    total = sum(held.values())
    holdings.reserve(slot, gpu, held.get(gpu, 0), host_bytes=total)
    task = room.spawn(
        _offload(room, slot, gpu, total, why, reason, purpose), name=f"offload {slot.name}"
    )
    slot.begin_offload(task)


async def _offload(
    room: TierRoom, slot: Slot, gpu: str, total: int, why: str, reason: UnloadReason, purpose: str
) -> None:
    started = time.monotonic()
    model = slot.model
    assert model is not None
    try:
        await run_in_thread(model.offload, name=f"offload-{slot.name}")  # type: ignore[attr-defined]
    except Exception:
        log.exception("could not offload %s to host memory; unloading it", slot.name)
        slot.offload_failed()
        room.start_unload(slot, why, reason=reason, purpose=purpose)
        return
    room.holdings.move_home(slot, CPU)  # the GPU's bytes go; the host's were reserved
    slot.offloaded()
    room.stats.of(slot.name).record_offload()
    room.notify()
    seconds = time.monotonic() - started
    room.events.emit(
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
    if room.closing:
        room.start_unload(slot, "shutdown", reason=UnloadReason.SHUTDOWN, quiet=True)
    else:
        room.unload_when_idle(slot)  # retired, or an unload was asked for meanwhile


def _restore_blocking(model: Model, device: str) -> int | None:
    model.restore(device)  # type: ignore[attr-defined]
    return measure_bytes(model)


async def restore(room: TierRoom, slot: Slot, device: str) -> tuple[Model, int | None, float]:
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
        on_exit=lambda: _reclaim(room, records[0]) if records else None,
    )
    timeout = slot.spec.load_timeout or room.settings.load_timeout
    try:
        try:  # a stopped (or timed-out) restore leaves the copy running
            size = await asyncio.wait_for(asyncio.shield(job), timeout)
        except TimeoutError:
            raise TimeoutError(f"restore timed out after {timeout:g}s (load_timeout)") from None
    except BaseException:
        _, thread = slot.drop_model()
        room.holdings.retire_thread(thread)
        if job.done():  # the copy raised: its thread is over, close the model now
            room.holdings.release(slot)
            await run_in_thread(functools.partial(dispose, (model, None)), name="dispose")
        else:
            job.cancel()  # the copy's result comes as an orphan: closed in its thread
            records.append(room.holdings.abandon(slot, "restore", "stopped during its restore"))
        raise
    return model, size, time.monotonic() - started


async def restore_load(room: TierRoom, slot: Slot, charge: Charge) -> None:
    """The load of an offloaded model, once its room is reserved (`charge`): the copy back,
    then its measured charge in place of the estimate (closed if that finds no room)."""
    model, size, seconds = await restore(room, slot, charge.placed or charge.device)
    measured = measured_charge(model, charge, size or slot.size_bytes or 0, room.devices)
    try:
        await room.settle_size(slot, model, measured)  # closes the model if no room
    except BaseException:
        room.holdings.forget(slot)
        raise
    restored(room, slot, seconds)
    room.unload_when_idle(slot)


def _reclaim(room: TierRoom, record: AbandonedThread) -> None:
    room.holdings.reclaim(record)
    room.notify()


def let_go(room: TierRoom, slot: Slot) -> None:
    """A restore that failed or was stopped before the model served again: a model still
    held is closed (in a thread) and its bytes released; nothing to do for a plain load."""
    model = slot.model
    if model is None or slot.state is State.LOADED:
        return
    room.holdings.forget(slot)
    job = run_in_thread(functools.partial(dispose, (model, None)), name=f"dispose-{slot.name}")
    job.add_done_callback(lambda done: done.cancelled() or done.exception())


def restored(room: TierRoom, slot: Slot, seconds: float) -> None:
    """The copy back to a GPU is done: the model serves again."""
    slot.restored(seconds)
    room.holdings.touch(slot)
    room.stats.of(slot.name).record_restore(seconds)
    home = room.holdings.budgets.home(slot)
    log.info("restored %s to %s from host memory in %s", slot.name, home, format_duration(seconds))
    room.events.emit(
        EventKind.RESTORED, slot.name, bytes=slot.size_bytes, seconds=seconds, device=home
    )
