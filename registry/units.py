"""Sizes and durations as people write them in models.yaml, and as logs print them."""

from __future__ import annotations

import math
import os
import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def total_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_size(value: object) -> int:
    """Bytes from 123, '512MiB', '2GiB', '10MB' or '60%' (of physical memory)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB, 2GiB, 10MB or 60%")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                "expected a finite, non-negative size such as 512MiB, 2GiB, 10MB or 60%"
            )
        return int(value)
    if not isinstance(value, str):
        raise ValueError("expected a size such as 512MiB, 2GiB, 10MB or 60%")
    text = value.strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage such as 60%") from None
        if not 0 < percent <= 100:
            raise ValueError(f"{value!r}: a percentage of memory must be in (0, 100]")
        return int(total_memory() * percent / 100)
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size; write e.g. 512MiB, 2GiB, 10MB or 60%")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: object) -> float:
    """Seconds from 30, '250ms', '30s', '10m', '1h30m' or '0'."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m or 1h")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("expected a finite, non-negative duration such as 30s, 10m or 1h")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 30s, 10m or 1h")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration; write e.g. 500ms, 30s, 10m or 1h")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def format_bytes(n: float) -> str:
    """Human size with SI units: 21.9 kB, 254.1 MB (rounded before the unit is chosen)."""
    value = float(n)
    if abs(round(value)) < 1000:
        return f"{value:.0f} B"
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if abs(round(value, 1)) < 1000 or unit == "GB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """Short human duration: 41 ms, 2.3 s, 3m, 1h05m."""
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f} ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    minutes = int(round(seconds) // 60)
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"
