"""The registry's housekeeping loop: idle TTLs, hot-model retries, idle-time compaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from registry.config.schema import ServerSettings
from registry.events import UnloadReason
from registry.lifecycle import Lifecycle
from registry.memory.sizes import compact
from registry.roster import Roster
from registry.slot import State
from registry.threads import run_in_thread
from registry.units import format_duration

IDLE_BEFORE_COMPACT = 30.0  # seconds without requests or loads
COMPACT_EVERY = 600.0
TICK = 0.25  # seconds between rounds


async def reap(life: Lifecycle, roster: Roster, settings: Callable[[], ServerSettings]) -> None:
    """Until shutdown: unload models idle past their TTL, retry failed hot models after their
    backoff, and collect frozen garbage once the server has been idle for a while."""
    busy_at = last_compact = time.monotonic()
    while not life.closing:
        await asyncio.sleep(TICK)
        now = time.monotonic()
        current = roster.slots()
        if any(s.leases or s.waiting or s.load_task for s in current):
            busy_at = now
        elif now - busy_at > IDLE_BEFORE_COMPACT and now - last_compact > COMPACT_EVERY:
            last_compact = now
            await run_in_thread(compact, name="compact")
        default_ttl = settings().idle_ttl
        for slot in current:
            ttl = slot.idle_ttl(default_ttl)
            if ttl > 0 and slot.evictable and now - slot.stats.last_used_mono > ttl:
                why = f"past its idle_ttl of {format_duration(ttl)}"
                life.start_unload(slot, why, reason=UnloadReason.TTL)
            retry = slot.state is State.FAILED or (
                slot.state is State.UNLOADED and slot.error is not None  # no room last time
            )
            if slot.spec.hot and not slot.hot_ready and retry and now >= slot.retry_at:
                life.start_load(slot)
