"""One model's place in the registry: its state, its lease count, its numbers."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.batching import Batcher
    from registry.config import ModelSpec, Source
    from registry.loaders import Model
    from registry.threads import ModelThread


class State(enum.StrEnum):
    """The model life cycle (docs/architecture.md)."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(eq=False)
class Slot:
    """Mutable record of one model; touched only on the event loop thread."""

    name: str
    spec: ModelSpec
    source: Source | None
    state: State = State.UNLOADED
    model: Model | None = None
    leases: int = 0  # requests holding the model (in inference or queued for a worker)
    waiting: int = 0  # requests waiting for a load or for room in the budget
    load_task: asyncio.Task[BaseException | None] | None = None
    unload_task: asyncio.Task[None] | None = None
    load_count: int = 0
    failures: int = 0
    retry_at: float = 0.0  # monotonic time before which a failed load is not retried
    error: str | None = None
    estimate: int | None = None
    size_bytes: int | None = None  # measured after the last load
    load_seconds: float | None = None
    last_used: float | None = None  # wall clock, for people
    last_used_mono: float = field(default_factory=time.monotonic)
    served: int = 0
    retired: bool = False  # removed from, or replaced in, models.yaml
    unload_requested: bool = False  # an admin unload waits for the leases to end
    load_started: float = 0.0
    replacement: Slot | None = None
    hot_ready: bool = False  # a hot model's preload has succeeded
    batcher: Batcher | None = None
    thread: ModelThread | None = None  # the model's inference thread while loaded
    infer_seconds: float | None = None  # moving average of one inference call
    isolation: str | None = None  # where the last load ran: "thread" or "process"
    recycles: int = 0  # process model: workers recycled for growing past their reservation
    worker_deaths: int = 0  # process model: workers that died or were killed
    abandoned: int = 0  # threads of this model still running after it stopped waiting for them
    failure: BaseException | None = None  # what the last failed load (or stuck call) raised
    served_at_load: int = 0  # `served` when the current load finished
    unload_why: str | None = None  # why an unload waits for the leases to end

    @property
    def evictable(self) -> bool:
        """Idle (no lease, no request waiting for it), loaded and not pinned."""
        return (
            self.state is State.LOADED
            and self.leases == 0
            and self.waiting == 0
            and not self.spec.pinned
        )

    def idle_ttl(self, default: float) -> float:
        """Seconds idle before an unload: the entry's idle_ttl, else the server's (0: never)."""
        return self.spec.idle_ttl if self.spec.idle_ttl is not None else default

    def touch(self) -> None:
        """Record a use now."""
        self.last_used = time.time()
        self.last_used_mono = time.monotonic()
