"""The bodies of an infer request and its response: a JSON header, then binary data.

A request body is a JSON header, optionally followed by the raw bytes of inputs whose
`parameters.binary_data_size` says how long they are; `Inference-Header-Content-Length`
gives the header's length (absent: the whole body is JSON). Responses use the same layout
for outputs asked for in binary (`binary_data_output` on the request, or `binary_data` on
one requested output). The tensors themselves: app/v2/json_tensors.py and
app/v2/binary_tensors.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from app.v2.binary_tensors import from_binary, to_binary
from app.v2.errors import TensorError
from app.v2.json_tensors import finite_numbers, json_data, parse_json, to_json
from app.v2.tensors import DATATYPES, Tensor
from registry.payload import may_hold_odd_numbers

HEADER_LENGTH = "Inference-Header-Content-Length"
# Request parameters that belong to the protocol, not to the model.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
)


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
        data = from_binary(rest[offset : offset + size], datatype, count, where)
        return Tensor(name, datatype, shape, data), size
    if "data" not in raw:
        raise TensorError(f"{where} has neither 'data' nor parameters.binary_data_size")
    data = json_data(raw["data"], datatype, shape, where)
    return Tensor(name, datatype, shape, data), 0


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
            blob = to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = to_json(tensor)
        described.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": described}
    if request.id is not None:
        response["id"] = request.id
    head = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
