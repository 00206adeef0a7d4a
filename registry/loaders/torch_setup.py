"""Process-wide torch settings, applied once, on the first load (torch is imported lazily)."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator, Sequence

from registry.memory.devices import parse_device_spec

_lock = threading.Lock()
_building = threading.Lock()
_threads: int | None = None
_done = False


def configure(torch_threads: int | None) -> None:
    """Remember the intra-op thread count to use (None: one per core)."""
    global _threads
    _threads = torch_threads


def default_threads() -> int:
    """One intra-op thread per core but one: the event loop and the HTTP server need a core.

    With every core given to torch, its OpenMP workers spin against the loop's thread for
    the GIL and the CPU (measured: first inference after a load 2.6-24 ms instead of 2-6 ms
    on 2 cores).
    """
    return max(1, (os.cpu_count() or 1) - 1)


def prepare_torch() -> None:
    """Import torch and transformers quietly, offline, with the configured thread count."""
    global _done
    with _lock:
        if _done:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch

        torch.set_num_threads(_threads or default_threads())
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        # The imports created a few hundred thousand long-lived objects; keep the garbage
        # collector from walking them on every full collection (a ~200 ms GIL pause).
        gc.freeze()
        _done = True


@contextlib.contextmanager
def one_build_at_a_time() -> Iterator[None]:
    """Hold this around every transformers `from_pretrained` (and `pipeline(...)`) call.

    While it builds a model, transformers patches process-wide state and puts back what it
    found on the way out: `PreTrainedModel.tie_weights` (emptied so that no weight is tied
    during the load), torch's default dtype and `torch.linspace`. Two builds that overlap in
    two threads undo each other's restore: the second saves the first's patch as "the
    original" and puts it back last, so weight tying stays off in the process for good, and
    every later model with tied weights (a causal LM's `lm_head`) is left on the meta device
    ("Cannot copy out of meta tensor"). So builds in this process take turns; loads in
    worker processes, tokenizers and everything else still run in parallel.
    """
    with _building:
        yield


def resolve_device(device: str | Sequence[str]) -> str:
    """The torch device of a `device:` entry: its first choice (placement across GPUs is not
    wired into loads yet, so `cuda` is GPU 0 and a list means its first entry); 'auto'
    becomes cuda when a GPU is present, else cpu."""
    device = parse_device_spec(device).first_choice()
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
