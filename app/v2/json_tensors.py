"""Open Inference Protocol tensors in JSON: parsed by the one JSON rule, checked, encoded."""

from __future__ import annotations

import math
from typing import Any

from app import json_body
from app.v2.errors import TensorError
from app.v2.tensors import FLOATING, INTEGER, Tensor, value_problem
from registry.errors import BadInput
from registry.payload import check_numbers, may_hold_odd_numbers


def parse_json(raw: bytes | str, what: str) -> Any:
    """JSON by the one rule every route follows (app/json_body.py), refused with a 400."""
    try:
        return json_body.parse(raw, what)
    except json_body.MalformedJSON as exc:
        raise TensorError(exc.message) from None


def finite_numbers(value: Any, where: str, prefix: str = "") -> None:
    """The native rule for numbers in JSON (registry.payload.check_numbers) as a 400.

    NaN, Infinity, 1e999 and integers beyond float64 are refused, naming the element:
    `where` is its name in the message, `prefix` what the message starts with.
    """
    try:
        check_numbers(value, where)
    except BadInput as exc:
        raise TensorError(prefix + exc.message) from None


def json_document(raw: bytes | str, what: str) -> Any:
    """One JSON document of a BYTES tensor: parsed, and its numbers checked (400s)."""
    document = parse_json(raw, f"{what} (a JSON document)")
    if may_hold_odd_numbers(raw):
        finite_numbers(document, "document", f"{what}: ")
    return document


def json_data(data: Any, datatype: str, shape: list[int], where: str) -> list[Any]:
    """JSON tensor data as a flat, row-major list, checked against its shape and datatype.

    Data may be flat (the shape's element count, row-major, as tritonclient sends it) or
    nested exactly as the shape (`[[1, 2], [3, 4]]` for `[2, 2]`); every element must be of
    the datatype's kind and within its range.
    """
    values = data if isinstance(data, list) else [data]
    kinds = set(map(type, values))
    nested = list in kinds
    if nested:
        values = _unnest(values, shape, where)
        kinds = set(map(type, values))
    elif len(values) != math.prod(shape):
        raise TensorError(
            f"{where}: shape {shape} holds {math.prod(shape)} elements but 'data' has {len(values)}"
        )
    if datatype in INTEGER and float in kinds:  # 3.0 is the integer 3
        values = [int(v) if type(v) is float and v.is_integer() else v for v in values]
        kinds = set(map(type, values))
    if not _all_valid(values, kinds, datatype):
        for index, value in enumerate(values):
            problem = value_problem(value, datatype)
            if problem is not None:
                at = _position(index, shape if nested else [len(values)])
                raise TensorError(f"{where}: {at} {problem}")
    return values


def _unnest(data: list[Any], shape: list[int], where: str) -> list[Any]:
    """Nested data, flattened, if it nests exactly as the shape says."""
    level: list[Any] = [data]
    for axis, size in enumerate(shape):
        inner: list[Any] = []
        for index, item in enumerate(level):
            if not isinstance(item, list) or len(item) != size:
                what = "is not a list"
                if isinstance(item, list):
                    what = f"has {len(item)} element{'' if len(item) == 1 else 's'}"
                raise TensorError(
                    f"{where}: {_position(index, shape[:axis])} {what} where shape {shape} "
                    f"needs a list of {size}; nested data must match the shape exactly (or "
                    f"send it flat: {math.prod(shape)} elements, row-major)"
                )
            inner.extend(item)
        level = inner
    return level  # elements that are still lists are refused by the datatype check


def _all_valid(values: list[Any], kinds: set[type], datatype: str) -> bool:
    """Whether every element (of these types) fits the datatype, checked in bulk."""
    if datatype == "BYTES":
        return kinds <= {str}
    if datatype == "BOOL":
        return kinds <= {bool}
    if datatype in INTEGER:
        limits = INTEGER[datatype]
        return kinds <= {int} and (
            not values or (limits.min <= min(values) and max(values) <= limits.max)
        )
    if not kinds <= {int, float}:
        return False
    import numpy as np

    try:
        array = np.asarray(values, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        return False
    return bool(np.isfinite(array).all()) and (
        not len(array) or float(np.abs(array).max()) <= FLOATING[datatype]
    )


def _position(index: int, dims: list[int]) -> str:
    """`data[i][j]` for flat `index` in an array of `dims` (`data` for none)."""
    if not dims:
        return "data"
    import numpy as np

    return "data" + "".join(f"[{i}]" for i in np.unravel_index(index, dims))


def to_json(tensor: Tensor) -> list[Any]:
    if tensor.datatype == "BYTES":
        return [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            for item in tensor.data
        ]
    data = tensor.data if isinstance(tensor.data, list) else tensor.data.tolist()  # numpy
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in data]
