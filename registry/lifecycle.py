"""Loading and unloading models under the byte budget (the manager's machinery).

- A model has at most one load task; the task belongs to this object, not to a request.
- A load reserves its estimated bytes first, evicting idle models in the eviction policy's
  order (registry/memory/policy.py), only as many as the room needs, and waiting at most
  `capacity_wait` when everything else is in use or pinned; it runs the loader in its own
  thread under `load_timeout`, then swaps the estimate for the measured size. The tracked
  total never exceeds the budget.
- Loads run in parallel (up to `max_parallel_loads`) only while they fit in free room: a
  load that must evict waits until no other load is running, so that load's model serves
  its waiting requests first and the victims are chosen from what is really idle
  (concurrent clients must not cost more loads than one client would). Loads take room in
  the order they asked for it, so that wait ends with the loads already running.
- An unload runs in a thread and releases the bytes when the model is really gone.
- It owns the parts it is made of, and they know nothing of it: the `Holdings`
  (registry/memory/holdings.py, the one writer of the budgets, the peak, the abandoned
  threads and the pool's retired threads), the `Room` (registry/memory/making_room.py:
  reserving, choosing victims, unloading), the worker `Supervision`
  (registry/process/supervision.py), the `StuckCalls` (registry/stuck_calls.py), the model
  calls (registry/calls.py) and the shared `Plumbing` (registry/plumbing.py). Other modules
  call its named transitions (`after_request`, `worker_lost`, `leased`, `retired_slots`,
  `begin_closing`, `drain_requests`, ...) and read its state through read-only properties.
- A load the registry stops waiting for (timeout, model replaced, shutdown): in a worker
  process it is killed, and its bytes are released once the worker is reaped; in a thread
  (which cannot be killed) it keeps its bytes reserved until the thread really ends, and the
  model is not loaded again before that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from registry.abandoned import AbandonedThread
from registry.calls import Calls
from registry.config.devices import device_limits
from registry.config.schema import ServerSettings
from registry.drain import Drain
from registry.errors import RegistryError
from registry.events import EventBus, UnloadReason
from registry.failures import Failures
from registry.loaders import Model
from registry.loading import Loads
from registry.memory.budget import ByteBudget
from registry.memory.device_budgets import DeviceBudgets
from registry.memory.devices import Device, host_device
from registry.memory.holdings import Holdings
from registry.memory.making_room import Room
from registry.plumbing import Plumbing
from registry.slot import Slot
from registry.stats import Stats, Timing
from registry.stuck_calls import StuckCalls
from registry.threads import InferencePool, ModelThread

log = logging.getLogger("registry")


class Lifecycle:
    """Loads, unloads and the budget; everything runs on the event loop's thread."""

    def __init__(
        self,
        settings: ServerSettings,
        base_dir: Path,
        pool: InferencePool,
        devices: Sequence[Device] | None = None,
    ) -> None:
        self._settings = settings
        self._base_dir = base_dir
        self._pool = pool
        # The devices are discovered once (the manager passes config_devices(config));
        # each has its own budget, and `budget` is the host's (registry/memory/device_budgets.py).
        found = list(devices) if devices is not None else [host_device()]
        self._devices: dict[str, Device] = {device.name: device for device in found}
        self._plumbing = Plumbing()
        self._events = EventBus()
        self._stats = Stats()
        self._holdings = Holdings(self._limits(), settings.eviction, pool)
        self._room = Room(
            settings, self._devices, self._holdings, self._plumbing, self._events, self._stats
        )
        failures = Failures(self._events, self._stats)
        self._calls = Calls(self._room, pool, StuckCalls(self._room, failures))
        self._loads = Loads(
            settings, base_dir, pool, self._room, self._calls, failures, self._plumbing
        )
        self._drain = Drain(self._plumbing.notify)
        self._drain_deadline = 0.0  # on the loop's clock, once shutdown has begun

    # ---------------------------------------------------------- what others read

    @property
    def settings(self) -> ServerSettings:
        """The server settings in force (a reload replaces them: use_settings)."""
        return self._settings

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: no load starts from then on."""
        return self._plumbing.closing

    @property
    def events(self) -> EventBus:
        """The stream of model events."""
        return self._events

    @property
    def stats(self) -> Stats:
        """Per-model request, load and unload figures."""
        return self._stats

    @property
    def drain(self) -> Drain:
        """The shutdown's drain: requests admitted before it are answered while it lasts."""
        return self._drain

    @property
    def pool(self) -> InferencePool:
        """The inference pool the model calls run on."""
        return self._pool

    @property
    def devices(self) -> Mapping[str, Device]:
        """The devices, by name."""
        return self._devices

    @property
    def budgets(self) -> DeviceBudgets[Slot]:
        """Every device's budget, to read (the lifecycle's Holdings write them)."""
        return self._holdings.budgets

    @property
    def budget(self) -> ByteBudget[Slot]:
        """The host's budget, to read."""
        return self._holdings.budget

    @property
    def peak_used(self) -> int:
        """The most bytes ever held or reserved at once on the host."""
        return self._holdings.peak_used

    @property
    def unused_loads(self) -> int:
        """Loads unloaded again before they served a single request."""
        return self._holdings.unused_loads

    @property
    def abandoned(self) -> tuple[AbandonedThread, ...]:
        """The threads the registry stopped waiting for, oldest first."""
        return self._holdings.abandoned

    def held(self) -> list[Slot]:
        """Every model holding or reserving bytes on any device."""
        return self._holdings.held()

    def retired_slots(self) -> list[Slot]:
        """Slots no longer in the roster that still hold or reserve bytes."""
        return [slot for slot in self._holdings.held() if slot.retirement.retired]

    def load_tasks(self) -> list[asyncio.Task[Any]]:
        """Loads running now (of retired slots too)."""
        return self._loads.running()

    # ------------------------------------------------------------------ plumbing

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start a task that this object keeps referenced until it ends."""
        return self._plumbing.spawn(coro, name=name)

    def notify(self) -> None:
        """Wake everything waiting for a state change."""
        self._plumbing.notify()

    async def wait_changed(self, seconds: float | None) -> None:
        """Wait for the next state change, at most `seconds`."""
        await self._plumbing.wait_changed(seconds)

    def predict_timeout(self, slot: Slot) -> float:
        """The model's predict_timeout, else the server's."""
        return self._calls.predict_timeout(slot)

    def busy_eta(self, slot: Slot) -> float:
        """Seconds until a busy model probably has room for one more request."""
        return self._room.busy_eta(slot)

    def load_eta(self, slot: Slot) -> float:
        """Seconds until the model is probably loaded (its last load time, else a guess)."""
        seconds = slot.stats.load_seconds
        if seconds is not None:
            return math.ceil(seconds + 0.5)
        return math.ceil(2 + (slot.estimate or 0) / 200e6)  # imports, then ~200 MB/s

    # ------------------------------------------------------------ configuration

    def use_settings(self, settings: ServerSettings, base_dir: Path) -> None:
        """A reloaded models.yaml's server settings, for the loads that start from now on."""
        self._settings = settings
        self._base_dir = base_dir
        self._room.use_settings(settings)
        self._loads.use_settings(settings, base_dir)

    def apply_limits(self, changed: set[str]) -> None:
        """After a reload's model changes: a new parallel-load limit or budget if they
        changed, then unloads until the total fits a lowered budget."""
        if "max_parallel_loads" in changed:
            self._loads.limit_parallel(self._settings.max_parallel_loads)
        if changed & {"memory_budget", "device_budgets"}:
            for device, limit in self._limits().items():
                self._holdings.set_limit(device, limit)
        self._room.enforce_limit()

    def _limits(self) -> dict[str, int]:
        return device_limits(self._settings, list(self._devices.values()))

    # ------------------------------------------------------------------ shutdown

    def begin_closing(self, drain_timeout: float) -> None:
        """Shutdown has begun: no load starts from now on; requests admitted before now
        are answered while the drain lasts, `drain_timeout` from now."""
        self._plumbing.begin_closing()
        self._drain_deadline = asyncio.get_running_loop().time() + drain_timeout
        self._drain.end_at(self._drain_deadline)
        self._plumbing.notify()

    def shorten_drain(self, drain_timeout: float) -> None:
        """The drain ends at most `drain_timeout` from now."""
        now = asyncio.get_running_loop().time()
        self._drain_deadline = min(self._drain_deadline, now + drain_timeout)
        self._drain.end_at(self._drain_deadline)

    async def drain_requests(self, pending: Callable[[], int]) -> None:
        """Wait while `pending()` requests are unanswered and the drain lasts; then those
        still waiting are answered 503."""
        loop = asyncio.get_running_loop()
        while pending() and loop.time() < self._drain_deadline:
            await self._plumbing.wait_changed(self._drain_deadline - loop.time())
        self._drain.end()

    def drain_left(self) -> float:
        """Seconds the drain had left when it ended (0 if it ran out)."""
        return max(0.0, self._drain_deadline - asyncio.get_running_loop().time())

    async def unload_all(self, slots: list[Slot], grace: float) -> tuple[int, int]:
        """Shutdown: cancel running loads (retired slots' too; nobody waits for them now),
        then unload every loaded model but thread models inside a call (a worker inside
        one is ended), waiting at most `grace` seconds.
        Returns the models unloaded and the bytes they held."""
        loads = self.load_tasks()
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        return await self._room.unload_everything(slots, grace)

    # ------------------------------------------------------- requests' transitions

    def leased(self, slot: Slot) -> None:
        """A request took a lease on the loaded model (the host's policy counts the use)."""
        self._holdings.used(slot)

    def after_request(self, slot: Slot) -> None:
        """A lease ended: the use counts, a model on its way out unloads after its last
        request, a worker's memory is followed (registry/process/supervision.py), a lowered
        budget is enforced, and waiters wake."""
        self._holdings.used(slot)
        self._room.unload_when_idle(slot)
        self._loads.supervision.follow_worker_memory(slot)
        self._room.enforce_limit()
        self._plumbing.notify()

    def worker_lost(self, slot: Slot, exc: RegistryError) -> None:
        """A call saw the worker of `slot` die or be killed (a process model's)."""
        self._loads.supervision.worker_lost(slot, exc)

    def stuck_error(self, slot: Slot) -> RegistryError:
        """What a request for a model whose call got stuck gets (503, after the backoff)."""
        return self._calls.stuck.error(slot)

    def late_error(self, slot: Slot, timeout: float) -> RegistryError:
        """What a request gets whose call had not started `timeout` after it queued."""
        return self._calls.stuck.late(slot, timeout)

    def mark_stuck(
        self,
        slot: Slot,
        model: Model,
        thread: ModelThread | None,
        timeout: float,
        call: concurrent.futures.Future[Any],
    ) -> BaseException:
        """A call on `model` ran past `timeout` (a pool's `on_stuck`): the model is marked
        failed (registry/stuck_calls.py); the request's error."""
        return self._calls.stuck.stuck(slot, model, thread, timeout, call)

    def refresh_batcher(self, slot: Slot) -> None:
        """(Re)build the batcher from the entry's `batch:` (registry/calls.py)."""
        self._calls.refresh_batcher(slot)

    def run_predict(
        self,
        slot: Slot,
        model: Model,
        thread: ModelThread | None,
        inputs: list[Any],
        parameters: Mapping[str, Any],
        *,
        timing: Timing | None = None,
    ) -> asyncio.Task[list[Any]]:
        """One predict call on the model's thread, bounded by its predict_timeout."""
        return self._calls.run_predict(slot, model, thread, inputs, parameters, timing=timing)

    # ----------------------------------------------------------------- unloading

    def request_unload(self, slot: Slot, reason: UnloadReason) -> None:
        """Unload the model (an admin's request, or a lowered budget's) once no request
        holds it (registry/memory/unloading.py)."""
        self._room.request_unload(slot, reason)

    def start_unload(self, slot: Slot, why: str, *, reason: UnloadReason) -> None:
        """Start unloading a loaded (or offloaded) model (an idle TTL's)."""
        self._room.start_unload(slot, why, reason=reason)

    # ------------------------------------------------------------------- loading

    def start_load(self, slot: Slot) -> None:
        """Start the model's load unless one runs (single flight) or an old thread still
        runs (registry/loading.py)."""
        self._loads.start_load(slot)

    def retire(self, slot: Slot) -> None:
        """A slot the roster let go (registry/roster.py): its load stops, and it unloads
        after its last request."""
        self._loads.retire(slot)
