"""The binary tensor extension: tensors as raw little-endian bytes after the JSON header.

BYTES elements are a 4-byte little-endian length and the bytes; numbers are little-endian,
row-major. numpy is imported by the first numeric tensor, not at startup.
"""

from __future__ import annotations

import struct
from typing import Any

from app.v2.errors import TensorError
from app.v2.tensors import NUMERIC, Tensor, value_problem


def from_binary(raw: bytes, datatype: str, count: int, where: str) -> list[Any]:
    if datatype != "BYTES":
        import numpy as np  # imported by the first binary tensor, not at startup

        dtype = np.dtype(NUMERIC[datatype])
        if len(raw) != count * dtype.itemsize:
            raise TensorError(
                f"{where}: {count} {datatype} elements take {count * dtype.itemsize} bytes, "
                f"binary_data_size is {len(raw)}"
            )
        array = np.frombuffer(raw, dtype=dtype)
        if dtype.kind == "f" and not np.isfinite(array).all():  # as JSON data is checked
            index = int(np.flatnonzero(~np.isfinite(array))[0])
            value = float(array[index])
            raise TensorError(f"{where}: data[{index}] {value_problem(value, datatype)}")
        values: list[Any] = array.tolist()
        return values
    items: list[Any] = []
    position = 0
    while position < len(raw):
        if position + 4 > len(raw):
            raise TensorError(f"{where}: BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, position)
        position += 4
        if position + length > len(raw):
            raise TensorError(f"{where}: a BYTES element of {length} bytes runs past its data")
        items.append(raw[position : position + length])
        position += length
    if len(items) != count:
        raise TensorError(
            f"{where}: the shape holds {count} elements but the data has {len(items)}"
        )
    return items


def to_binary(tensor: Tensor) -> bytes:
    if tensor.datatype == "FP32" and isinstance(tensor.data, list):
        return struct.pack(f"<{len(tensor.data)}f", *tensor.data)  # cheaper than numpy when small
    if tensor.datatype != "BYTES":
        import numpy as np

        return np.asarray(tensor.data, dtype=NUMERIC[tensor.datatype]).tobytes()
    parts: list[bytes] = []
    for item in tensor.data:
        raw = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)
