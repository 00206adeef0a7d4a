"""Process-wide torch settings, applied once, on the first load (torch is imported lazily)."""

from __future__ import annotations

import gc
import os
import threading

_lock = threading.Lock()
_threads: int | None = None
_done = False


def configure(torch_threads: int | None) -> None:
    """Remember the intra-op thread count to use (None: one per core)."""
    global _threads
    _threads = torch_threads


def prepare_torch() -> None:
    """Import torch and transformers quietly, offline, with the configured thread count."""
    global _done
    with _lock:
        if _done:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch

        torch.set_num_threads(_threads or os.cpu_count() or 1)
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        # The imports created a few hundred thousand long-lived objects; keep the garbage
        # collector from walking them on every full collection (a ~200 ms GIL pause).
        gc.freeze()
        _done = True


def resolve_device(device: str) -> str:
    """'auto' becomes cuda when a GPU is present, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
