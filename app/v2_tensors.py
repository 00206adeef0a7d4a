"""Open Inference Protocol tensors: JSON and the binary tensor extension, in and out.

A request body is a JSON header, optionally followed by the raw bytes of inputs whose
`parameters.binary_data_size` says how long they are; `Inference-Header-Content-Length`
gives the header's length (absent: the whole body is JSON). BYTES elements are a 4-byte
little-endian length and the bytes; numbers are little-endian, row-major. Responses use the
same layout for outputs asked for in binary (`binary_data_output` on the request, or
`binary_data` on one requested output).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from app import json_body
from registry.errors import BadInput
from registry.payload import check_numbers, may_hold_odd_numbers

HEADER_LENGTH = "Inference-Header-Content-Length"
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
# Request parameters that belong to the protocol, not to the model.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
)


class TensorError(BadInput):
    """The request's tensors are malformed (HTTP 400)."""

    kind = "bad_tensor"
    status = 400  # the protocol's status for a malformed request (BadInput is 422)


@dataclass(frozen=True)
class Tensor:
    """A tensor with flat, row-major data: bytes (or str, from JSON) for BYTES, else numbers.

    `data` is a list, or (for outputs) a flat numpy array.
    """

    name: str
    datatype: str
    shape: list[int]
    data: Any


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request."""

    id: str | None
    inputs: list[Tensor]
    outputs: dict[str, bool] | None  # requested output -> binary; None: all outputs
    binary_output: bool
    parameters: dict[str, Any]  # for the model (protocol parameters removed)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON plus binary input data)."""
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise TensorError(
                f"{HEADER_LENGTH} is {header_length!r} but the body has {len(body)} bytes"
            )
        head, rest = body[:size], body[size:]
    request = parse_json(head, "the inference header")
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise TensorError('expected {"inputs": [{"name", "datatype", "shape", "data"}, ...]}')
    parameters = _mapping(request.get("parameters"), "parameters")
    if may_hold_odd_numbers(head):
        finite_numbers(parameters, "parameters")
    inputs, offset = [], 0
    for i, raw in enumerate(request["inputs"]):
        tensor, used = _input(raw, i, rest, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(rest):
        raise TensorError(
            f"the body has {len(rest)} bytes after the header but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    outputs = None
    if request.get("outputs") is not None:
        outputs = _outputs(request["outputs"], parameters)
    request_id = request.get("id")
    return InferRequest(
        id=None if request_id is None else str(request_id),
        inputs=inputs,
        outputs=outputs,
        binary_output=bool(parameters.get("binary_data_output", False)),
        parameters={k: v for k, v in parameters.items() if k not in PROTOCOL_PARAMETERS},
    )


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


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TensorError(f"'{where}' must be a JSON object")
    return value


def _input(raw: Any, index: int, rest: bytes, offset: int) -> tuple[Tensor, int]:
    """One input tensor, and how many bytes of binary data it took."""
    if not isinstance(raw, dict):
        raise TensorError(f"inputs[{index}] must be an object")
    name = raw.get("name")
    datatype = raw.get("datatype")
    shape = raw.get("shape")
    where = f"input {name!r}" if isinstance(name, str) else f"inputs[{index}]"
    if not isinstance(name, str):
        raise TensorError(f"{where} needs a 'name'")
    if datatype not in DATATYPES:
        raise TensorError(f"{where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise TensorError(f"{where}: 'shape' must be a list of non-negative integers")
    count = math.prod(shape)
    size = _mapping(raw.get("parameters"), f"{where}.parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(rest):
            raise TensorError(
                f"{where}: binary_data_size {size!r} runs past the end of the body "
                f"({len(rest) - offset} bytes left)"
            )
        data = _from_binary(rest[offset : offset + size], datatype, count, where)
        return Tensor(name, datatype, shape, data), size
    if "data" not in raw:
        raise TensorError(f"{where} has neither 'data' nor parameters.binary_data_size")
    data = json_data(raw["data"], datatype, shape, where)
    return Tensor(name, datatype, shape, data), 0


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
            problem = _value_problem(value, datatype)
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


def _value_problem(value: Any, datatype: str) -> str | None:
    """Why one element does not fit the datatype; None if it does."""
    shown = _show(value)
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


def _show(value: Any) -> str:
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


def _position(index: int, dims: list[int]) -> str:
    """`data[i][j]` for flat `index` in an array of `dims` (`data` for none)."""
    if not dims:
        return "data"
    import numpy as np

    return "data" + "".join(f"[{i}]" for i in np.unravel_index(index, dims))


def _from_binary(raw: bytes, datatype: str, count: int, where: str) -> list[Any]:
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
            raise TensorError(f"{where}: data[{index}] {_value_problem(value, datatype)}")
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


def _outputs(raw: Any, parameters: dict[str, Any]) -> dict[str, bool]:
    if not isinstance(raw, list):
        raise TensorError("'outputs' must be a list of {\"name\": ...}")
    default = bool(parameters.get("binary_data_output", False))
    wanted: dict[str, bool] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise TensorError(f"outputs[{i}] must be an object with a 'name'")
        options = _mapping(item.get("parameters"), f"outputs[{i}].parameters")
        unknown = sorted(set(options) - {"binary_data"})
        if unknown:
            raise TensorError(
                f"output {item['name']!r}: parameters {unknown} are not supported "
                "(only 'binary_data'); use the model's own parameters, e.g. top_k, instead"
            )
        wanted[item["name"]] = bool(options.get("binary_data", default))
    return wanted


def encode_response(
    model: str, request: InferRequest, outputs: list[Tensor]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    chosen = outputs
    if request.outputs is not None:
        by_name = {t.name: t for t in outputs}
        unknown = [n for n in request.outputs if n not in by_name]
        if unknown:
            raise TensorError(
                f"model {model!r} has no output(s) {unknown}; it has {sorted(by_name)}"
            )
        chosen = [by_name[n] for n in request.outputs]
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in chosen:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        binary = request.binary_output
        if request.outputs is not None:
            binary = request.outputs[tensor.name]
        if binary:
            blob = _to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json(tensor)
        described.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": described}
    if request.id is not None:
        response["id"] = request.id
    head = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _to_binary(tensor: Tensor) -> bytes:
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


def _to_json(tensor: Tensor) -> list[Any]:
    if tensor.datatype == "BYTES":
        return [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            for item in tensor.data
        ]
    data = tensor.data if isinstance(tensor.data, list) else tensor.data.tolist()  # numpy
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in data]
