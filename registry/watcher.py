"""Notice edits of models.yaml by polling its stat (cheap, and works with every editor)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("registry")

Stamp = tuple[int, int, int] | None


def stamp(path: Path) -> Stamp:
    """What changes when the file is written or replaced (None while it is missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def watch(
    path: Path, interval: float, changed: Callable[[], Awaitable[object]], since: Stamp
) -> None:
    """Call `changed()` after each edit since `since`, once the file has stopped changing.

    Editors save by renaming over the file or by truncating and writing it; a read in the
    middle of a write just fails validation, and the write's next stat change retries.
    """
    last = since
    while True:
        await asyncio.sleep(interval)
        current = stamp(path)
        if current == last:
            continue
        await asyncio.sleep(min(interval, 0.2))
        if stamp(path) != current:
            continue  # still being written: look again next round
        last = current
        try:
            await changed()
        except Exception:  # config errors are reported by the callback; this is a bug
            log.exception("reload after an edit of %s failed", path)
