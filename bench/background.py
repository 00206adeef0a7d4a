"""Work that runs beside a measurement: a function called in a loop on a thread until stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable


def loop_in_thread(body: Callable[[], None]) -> tuple[threading.Thread, threading.Event]:
    """Call body() on a daemon thread until the returned event is set."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            body()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stop
