"""How big a model is: weight files read before a load, tensors measured after it; and giving
memory back. Each loader's `estimate_bytes` builds on these (`registry/loaders/`).

transformers loads safetensors by mmap, so RSS says little about a model; the budget counts
parameter and buffer bytes instead (measured: a 201 MiB model raised RSS by 16 MiB at load,
then more as its pages were touched; docs/architecture.md, contract 3).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import json
import logging
import math
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.hfcache import snapshot_dir

if TYPE_CHECKING:
    from registry.sources import Source

log = logging.getLogger(__name__)

_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
_HEADER_LIMIT = 100 * 1024 * 1024


_FLOATS = frozenset({"F64", "F32", "F16", "BF16"})
_TARGET_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def safetensors_bytes(path: Path, dtype: str | None = None) -> int:
    """Tensor bytes in a .safetensors file, read from its header without reading the data.

    With `dtype` (float32/float16/bfloat16), floating tensors count at that item size, as
    `from_pretrained(dtype=...)` converts them.
    """
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _HEADER_LIMIT:
            raise ValueError(f"{path} is not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} is not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (the header is not an object)")
    target = _TARGET_ITEMSIZE.get(dtype or "")
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        if target is not None and entry.get("dtype") in _FLOATS:
            total += math.prod(int(d) for d in entry["shape"]) * target
        else:
            total += int(end) - int(start)
    return total


def weight_files_bytes(source: Source | None, dtype: str | None) -> int | None:
    """Bytes the weight files of `source` hold once loaded (at `dtype`), None where unknown.

    The safetensors headers when there are any (read, not the data), else the sizes of pickled
    weight files; an `hf:` source is looked up in the local Hugging Face cache.
    """
    if source is None:
        return None
    directory = source.path
    if source.repo is not None:  # the snapshot in the local Hugging Face cache
        try:
            directory = snapshot_dir(source.repo, source.revision)
        except LookupError:
            return None  # reported by the config check, and by the load
    if directory is None or not directory.is_dir():
        return None
    try:
        return _weights_estimate(directory, dtype)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("cannot estimate the size of %s: %s", directory, exc)
        return None


def _weights_estimate(directory: Path, dtype: str | None) -> int | None:
    tensors = sorted(directory.glob("*.safetensors"))
    if tensors:
        return sum(safetensors_bytes(p, dtype) for p in tensors)
    files = [p for pattern in _PICKLE_WEIGHTS for p in directory.glob(pattern)]
    if files:
        return sum(p.stat().st_size for p in files)
    return None


def _tensors(obj: Any) -> Iterator[Any]:
    """Every parameter and buffer of the torch modules inside `obj` (one level deep)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    seen_modules: set[int] = set()
    for module in _modules(obj, torch.nn.Module):
        if id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        yield from module.parameters()
        yield from module.buffers()


def _modules(obj: Any, module_type: type, depth: int = 2) -> Iterable[Any]:
    if isinstance(obj, module_type):
        yield obj
        return
    if depth == 0 or isinstance(obj, str | bytes | int | float):
        return
    for value in list(getattr(obj, "__dict__", {}).values()):
        yield from _modules(value, module_type, depth - 1)


def measure_bytes(obj: Any) -> int | None:
    """Sum of parameter and buffer bytes of the torch modules in `obj`; tied weights once."""
    reported = getattr(obj, "size_bytes", None)
    if isinstance(reported, int):
        return reported
    total = 0
    found = False
    seen: set[tuple[int, int]] = set()
    for tensor in _tensors(obj):
        found = True
        key = (tensor.data_ptr(), tensor.nbytes)  # tied weights are one tensor twice
        if key in seen:
            continue
        seen.add(key)
        total += tensor.nbytes
    return total if found else None


def tensor_device(obj: Any) -> str | None:
    """The device of the first parameter or buffer of the torch modules in `obj` ("cpu",
    "cuda:0", ...); None where it holds none."""
    for tensor in _tensors(obj):
        return str(tensor.device)
    return None


def rss_bytes() -> int:
    """Resident set size of this process (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def compact() -> None:
    """A full collection that includes objects frozen after loads (GIL for ~0.2 s: idle only)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    release_memory()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, opened once: each CDLL makes a class of its own, garbage for the collector,
    which a load's gc.freeze() would keep (one per unload, under churn, for good)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_memory(*, full: bool = False) -> int:
    """Return freed memory to the OS: gc, malloc_trim on glibc, the CUDA cache if used.

    Weights are freed by reference counting when a model is dropped; a full collection
    walks every object of torch and transformers and holds the GIL for ~200 ms, which
    stalls the event loop. So only the young generations are collected, unless `full`.
    Returns the resident bytes that malloc_trim gave back (0 where it does not apply).
    """
    gc.collect(2 if full else 1)
    given_back = 0
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):  # a libc without malloc_trim (musl)
            before = rss_bytes()
            libc.malloc_trim(0)
            given_back = max(0, before - rss_bytes())
    # torch may be half-imported: a load thread that is importing it when shutdown begins.
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    if cuda is not None and getattr(cuda, "is_initialized", bool)():
        cuda.empty_cache()
    return given_back
