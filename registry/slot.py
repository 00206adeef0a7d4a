"""One model's place in the registry.

A `Slot` is what the registry knows about one name of models.yaml, read top to bottom:
- the entry: its name, its `ModelSpec` and where its files are;
- its state in the life cycle, the requests on it (leases and waiters), the task that is
  loading or unloading it, and its last failure with the backoff before the next try;
- what is loaded: the model, its inference thread and its batcher, where it runs, its size;
- `stats` (`SlotStats`): what it has counted (loads, requests served, times);
- `retirement` (`Retirement`): whether it is on its way out: gone from models.yaml, or an
  unload (admin, lowered budget) that waits for its last request.

Its fields change only through the methods below, one per transition, called by the
lifecycle (registry/lifecycle.py, registry/memory/making_room.py), admission
(registry/admission.py) and the roster (registry/roster.py). Everything runs on the event
loop's thread.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from registry.events import UnloadReason
from registry.loaders.interface import device_of

if TYPE_CHECKING:
    from registry.batching import Batcher
    from registry.config.schema import BackoffSpec, ModelSpec
    from registry.loaders import Model
    from registry.sources import Source
    from registry.threads import ModelThread


class State(enum.StrEnum):
    """The model life cycle (docs/architecture.md)."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"
    OFFLOADING = "offloading"  # evicted from its GPU: being copied to host memory
    OFFLOADED = "offloaded"  # kept in host memory; a load restores it by a copy


# The states in which a slot holds a model (loaded, or kept in host memory) that an unload
# closes.
HOLDING = (State.LOADED, State.OFFLOADED)


@dataclass
class SlotStats:
    """What one slot has counted since it was made (a replaced entry starts a new slot; the
    per-name counters of /metrics live in registry/stats.py)."""

    load_count: int = 0
    load_seconds: float | None = None  # how long the last load took
    served: int = 0  # requests answered
    served_at_load: int = 0  # `served` when the current load finished
    infer_seconds: float | None = None  # moving average of one inference call
    last_used: float | None = None  # wall clock, for people
    last_used_mono: float = field(default_factory=time.monotonic)
    recycles: int = 0  # process model: workers recycled for growing past their reservation
    worker_deaths: int = 0  # process model: workers that died or were killed

    @property
    def unused(self) -> bool:
        """The current load has not served a single request."""
        return self.served == self.served_at_load

    def touch(self) -> None:
        """Record a use now."""
        self.last_used = time.time()
        self.last_used_mono = time.monotonic()

    def record_load(self, seconds: float) -> None:
        """A load finished in `seconds`; it counts as a use."""
        self.load_count += 1
        self.load_seconds = seconds
        self.served_at_load = self.served
        self.touch()

    def record_release(self, *, served: bool) -> None:
        """A request let go of the model (`served`: it got its answer)."""
        self.served += served
        self.touch()

    def record_call(self, seconds: float) -> None:
        """One inference call took `seconds` (a moving average)."""
        previous = self.infer_seconds
        self.infer_seconds = seconds if previous is None else 0.8 * previous + 0.2 * seconds

    def record_recycle(self) -> None:
        """A process model's worker is recycled."""
        self.recycles += 1

    def record_worker_death(self) -> None:
        """A process model's worker died or was killed."""
        self.worker_deaths += 1


@dataclass
class Retirement:
    """Whether a model is on its way out; if so it unloads after its last request."""

    retired: bool = False  # removed from, or replaced in, models.yaml: takes no new request
    replacement: Slot | None = None  # the slot that took its name (None: removed)
    unload_request: UnloadReason | None = None  # ADMIN or BUDGET: waits for the leases to end

    @property
    def due(self) -> bool:
        """It unloads as soon as no request holds it."""
        return self.retired or self.unload_request is not None

    @property
    def unload_requested(self) -> bool:
        """An admin unload or a lowered budget waits for the leases to end."""
        return self.unload_request is not None

    def retire(self, replacement: Slot | None) -> None:
        """Removed from models.yaml, or replaced by `replacement` (registry/roster.py)."""
        self.retired = True
        self.replacement = replacement

    def request_unload(self, reason: UnloadReason) -> None:
        """Unload after the last request (ADMIN or BUDGET); an earlier request stands."""
        if self.unload_request is None:
            self.unload_request = reason

    def cancel_unload(self) -> bool:
        """Withdraw a pending unload request; True if there was one."""
        pending = self.unload_request is not None
        self.unload_request = None
        return pending

    def why(self) -> tuple[str, UnloadReason]:
        """Why it unloads: for people (the log line) and for the event stream."""
        if self.retired:
            if self.replacement is not None:
                return "replaced by a new version in models.yaml", UnloadReason.RELOAD
            return "removed from models.yaml", UnloadReason.RELOAD
        if self.unload_request is UnloadReason.BUDGET:
            return "the memory budget was lowered", UnloadReason.BUDGET
        return "admin request", UnloadReason.ADMIN


@dataclass(eq=False)
class Slot:
    """One model's place in the registry (see the module docstring)."""

    # The entry.
    name: str
    spec: ModelSpec
    source: Source | None
    # Its state, the requests on it and the task changing it.
    state: State = State.UNLOADED
    leases: int = 0  # requests holding the model (in inference or queued for a worker)
    waiting: int = 0  # requests waiting for a load or for room in the budget
    load_task: asyncio.Task[BaseException | None] | None = None
    unload_task: asyncio.Task[None] | None = None
    load_started: float = 0.0  # monotonic
    hot_ready: bool = False  # a hot model's preload has succeeded
    abandoned: int = 0  # its threads still running after the registry stopped waiting for them
    # Its last failure, and the backoff before the next load.
    error: str | None = None
    failure: BaseException | None = None  # what the last failed load (or stuck call) raised
    failures: int = 0  # failed loads in a row
    retry_at: float = 0.0  # monotonic time before which a failed load is not retried
    # What is loaded.
    model: Model | None = None
    thread: ModelThread | None = None  # the model's inference thread while loaded
    batcher: Batcher | None = None
    isolation: str | None = None  # where the last load ran: "thread" or "process"
    device: str | None = None  # the device the last load ran on ("cpu", "cuda:0"), if it says
    estimate: int | None = None  # bytes, before the load
    size_bytes: int | None = None  # measured after the last load
    stats: SlotStats = field(default_factory=SlotStats)
    retirement: Retirement = field(default_factory=Retirement)

    # ---------------------------------------------------------------- questions

    @property
    def evictable(self) -> bool:
        """Idle (no lease, no request waiting for it), loaded (or offloaded) and not pinned."""
        return (
            self.state in HOLDING
            and self.leases == 0
            and self.waiting == 0
            and not self.spec.pinned
        )

    @property
    def ready(self) -> bool:
        """Loaded and staying: a request may take a lease on it."""
        return self.state is State.LOADED and not self.retirement.unload_requested

    @property
    def needs_load(self) -> bool:
        """A request must start a load first: nothing loaded, failed, or kept in host memory
        (whose load is a copy back to a GPU)."""
        return self.state in (State.UNLOADED, State.FAILED, State.OFFLOADED)

    def idle_ttl(self, default: float) -> float:
        """Seconds idle before an unload: the entry's idle_ttl, else the server's (0: never)."""
        return self.spec.idle_ttl if self.spec.idle_ttl is not None else default

    # ----------------------------------------------------------------- requests

    def add_waiter(self) -> None:
        """A request waits for this model (for its load, or room in the budget)."""
        self.waiting += 1

    def remove_waiter(self) -> None:
        """A request stopped waiting."""
        self.waiting -= 1

    def lease(self) -> None:
        """A request takes the loaded model."""
        self.leases += 1
        self.stats.touch()

    def release(self, *, served: bool) -> None:
        """A request is done with the model (`served`: it got its answer)."""
        self.leases -= 1
        self.stats.record_release(served=served)

    # ------------------------------------------------------------------ loading

    def begin_load(self, task: asyncio.Task[BaseException | None]) -> None:
        """`task` loads the model from now on."""
        self.state = State.LOADING
        self.error = None
        self.load_started = time.monotonic()
        self.load_task = task

    def estimated(self, nbytes: int | None) -> None:
        """The size estimated before a load."""
        self.estimate = nbytes

    def measured(self, nbytes: int | None) -> None:
        """The size measured after a load (None: measure again on the next one)."""
        self.size_bytes = nbytes

    def runs_in(self, isolation: str) -> None:
        """Where the load runs: "thread" or "process"."""
        self.isolation = isolation

    def loaded(self, model: Model, thread: ModelThread, seconds: float) -> None:
        """The load succeeded: the model serves on `thread` (and on the device it reports);
        its failures are forgotten."""
        self.model = model
        self.device = device_of(model)
        self.thread = thread
        self.state = State.LOADED
        self.stats.record_load(seconds)
        self.failures = 0
        self.error = None
        self.failure = None
        if self.spec.hot:
            self.hot_ready = True

    def use_batcher(self, batcher: Batcher | None) -> None:
        """Requests go through `batcher` from now on (None: straight to the thread)."""
        self.batcher = batcher

    def no_room(self, error: str, retry_at: float) -> None:
        """The load found no room: unloaded, not retried before `retry_at` by the reaper."""
        self.state = State.UNLOADED
        self.error = error
        self.retry_at = retry_at

    def load_cancelled(self) -> None:
        """The load was stopped (model replaced or removed, shutdown)."""
        self.state = State.UNLOADED

    def load_ended(self) -> None:
        """The load task is over; if the model did not load, nothing is left to unload."""
        self.load_task = None
        if self.state is not State.LOADED:
            self.retirement.cancel_unload()

    def fail(self, error: str, backoff: BackoffSpec, cause: BaseException | None) -> float:
        """Failed (`cause` raised, None keeps the last cause): the next load waits for the
        backoff, doubling with each failure in a row. Returns the backoff in seconds."""
        self.failures += 1
        delay: float = min(backoff.max, backoff.initial * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + delay
        self.state = State.FAILED
        if cause is not None:
            self.failure = cause
        self.error = error
        return delay

    def thread_abandoned(self) -> None:
        """The registry stopped waiting for one of its threads (registry/abandoned.py)."""
        self.abandoned += 1

    def thread_ended(self) -> bool:
        """An abandoned thread ended; True if it was the last."""
        self.abandoned -= 1
        return self.abandoned == 0

    def restored(self, seconds: float) -> None:
        """An offloaded model was copied back to its GPU in `seconds`: it serves again (a
        restore counts as a use, not as a load from disk)."""
        assert self.model is not None
        self.device = device_of(self.model)
        self.state = State.LOADED
        self.stats.touch()
        self.failures = 0
        self.error = None
        self.failure = None

    def restore_refused(self, error: str) -> None:
        """No GPU had room to restore the offloaded model: it stays in host memory."""
        self.state = State.OFFLOADED
        self.error = error

    # --------------------------------------------------------------- offloading

    def begin_offload(self, task: asyncio.Task[None]) -> None:
        """Evicted from its GPU: `task` copies the model to host memory from now on."""
        self.state = State.OFFLOADING
        self.unload_task = task

    def offloaded(self) -> None:
        """The model is kept in host memory (it keeps its model and thread)."""
        self.state = State.OFFLOADED
        self.unload_task = None
        self.device = "cpu"

    def offload_failed(self) -> None:
        """The copy to host memory failed: the model is loaded again, for an unload."""
        self.state = State.LOADED
        self.unload_task = None

    # ---------------------------------------------------------------- unloading

    def drop_model(self) -> tuple[Model | None, ModelThread | None]:
        """Forget the model, its thread and its batcher (requests queued in the batcher keep
        it); returns the model and the thread, for the caller to close and retire."""
        model, thread = self.model, self.thread
        self.model = None
        self.thread = None
        self.batcher = None
        return model, thread

    def begin_unload(self, task: asyncio.Task[None]) -> None:
        """`task` unloads the model from now on."""
        self.state = State.UNLOADING
        self.unload_task = task

    def unloaded(self) -> None:
        """The model is gone; a pending unload request is fulfilled."""
        self.state = State.UNLOADED
        self.unload_task = None
        self.retirement.cancel_unload()

    # ------------------------------------------------------------------- config

    def update(self, spec: ModelSpec) -> None:
        """An in-place edit of the entry (hot, pinned, TTL, batch...); a model that has just
        become hot is not ready before it loads as a hot model."""
        was_hot = self.spec.hot
        self.spec = spec
        self.hot_ready = self.hot_ready and was_hot

    def mark_hot_ready(self) -> None:
        """A model that became hot while loaded counts as preloaded."""
        self.hot_ready = True
