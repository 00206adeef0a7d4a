"""Open Inference Protocol tensors: the datatypes, their ranges, and the rule for one element.

JSON data (app/v2/json_tensors.py) and binary data (app/v2/binary_tensors.py) are checked by
the same rule, so that a value is refused with the same message however it was sent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

NUMERIC = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
DATATYPES = ("BYTES", *NUMERIC)


@dataclass(frozen=True)
class _Range:
    min: int
    max: int


# Written out rather than read from numpy, which is imported by the first tensor that needs
# it, not at startup (tests/test_v2_http.py checks them against numpy's iinfo and finfo).
INTEGER = {
    f"{kind}INT{bits}": _Range(
        0 if kind else -(2 ** (bits - 1)), 2**bits - 1 if kind else 2 ** (bits - 1) - 1
    )
    for kind in ("", "U")
    for bits in (8, 16, 32, 64)
}
FLOATING = {"FP16": 65504.0, "FP32": 3.4028234663852886e38, "FP64": 1.7976931348623157e308}


@dataclass(frozen=True)
class Tensor:
    """A tensor with flat, row-major data: bytes (or str, from JSON) for BYTES, else numbers.

    `data` is a list, or (for outputs) a flat numpy array.
    """

    name: str
    datatype: str
    shape: list[int]
    data: Any


def value_problem(value: Any, datatype: str) -> str | None:
    """Why one element does not fit the datatype; None if it does."""
    shown = show(value)
    if datatype == "BYTES":
        return None if type(value) is str else f"is {shown}; BYTES data in JSON must be strings"
    if datatype == "BOOL":
        return None if type(value) is bool else f"is {shown}; BOOL takes only true or false"
    if datatype in INTEGER:
        limits = INTEGER[datatype]
        if type(value) is not int:
            return f"is {shown}; {datatype} takes integers"
        if not limits.min <= value <= limits.max:
            return f"is {shown}, outside {datatype}'s range {limits.min} to {limits.max}"
        return None
    if type(value) not in (int, float):
        return f"is {shown}; {datatype} takes numbers"
    if isinstance(value, float) and not math.isfinite(value):
        return f"is {shown}; {datatype} takes finite numbers (no NaN or Infinity)"
    if abs(value) > FLOATING[datatype]:
        top = FLOATING[datatype]
        return f"is {shown}, outside {datatype}'s range -{top:.4g} to {top:.4g}"
    return None


def show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) >= 10**20:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, list):
        return f"a list of {len(value)} (nested deeper than the shape)"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    text = json.dumps(value, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."
