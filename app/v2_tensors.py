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

from registry.errors import BadInput

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
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TensorError(f"the inference header is not valid JSON ({exc})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise TensorError('expected {"inputs": [{"name", "datatype", "shape", "data"}, ...]}')
    parameters = _mapping(request.get("parameters"), "parameters")
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
    data = _flatten(raw["data"])
    if len(data) != count:
        raise TensorError(
            f"{where}: shape {shape} holds {count} elements but 'data' has {len(data)}"
        )
    if datatype == "BYTES":
        if not all(isinstance(item, str) for item in data):
            raise TensorError(f"{where}: BYTES data in JSON must be strings")
    elif not all(isinstance(item, int | float) for item in data):
        raise TensorError(f"{where}: {datatype} data must be numbers")
    return Tensor(name, datatype, shape, data), 0


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _from_binary(raw: bytes, datatype: str, count: int, where: str) -> list[Any]:
    if datatype != "BYTES":
        import numpy as np  # imported by the first binary tensor, not at startup

        dtype = np.dtype(NUMERIC[datatype])
        if len(raw) != count * dtype.itemsize:
            raise TensorError(
                f"{where}: {count} {datatype} elements take {count * dtype.itemsize} bytes, "
                f"binary_data_size is {len(raw)}"
            )
        values: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
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
