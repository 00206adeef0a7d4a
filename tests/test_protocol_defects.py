"""Protocol inputs a hostile client sends: deep JSON, V2 tensors that do not fit, event ids.

- JSON nested deeper than the one rule (app/json_body.py: 64 levels) is a client error on
  every route, in each protocol's own shape: 422 on the native API, 400 on the Open
  Inference Protocol and on OpenAI's routes (their status for a malformed body).
- V2 JSON tensors are checked against their shape (flat, or nested exactly as the shape)
  and their datatype (kind and range).
- Numbers in V2 JSON documents (BYTES tensors for a JSON model) and in the request's
  parameters follow the native rule (no NaN, Infinity, 1e999); binary float tensors too.
- A negative Last-Event-ID (or ?after) on /events is a 400, never a made-up `gap`.

The real app with its lifespan in process; the real tritonclient and openai clients and
the /events stream against a real server process on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from app.json_body import MAX_DEPTH
from app.main import create_app
from devkit.server import Process, serve
from registry.config.schema import Config

CONFIG = """
server: {memory_budget: 100MB, admin_token: secret, watch: false}
models:
  echo: {loader: fake, input: text, options: {size: 1MB}}
  rows: {loader: fake, options: {size: 1MB}}
  vectors: {loader: fake, task: sentence-embeddings, options: {size: 1MB}}
"""
AUTH = {"Authorization": "Bearer secret"}
DEEP = "[" * 50_000  # what a hostile client sends: no closing brackets needed to hurt
TOO_DEEP = f"more than {MAX_DEPTH} levels deep"


@pytest.fixture
def client(write_config: Callable[[str], Config]) -> Iterator[TestClient]:
    with TestClient(create_app(write_config(CONFIG))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    config = tmp_path_factory.mktemp("defects") / "models.yaml"
    config.write_text(CONFIG)
    with serve(config) as process:
        process.wait_live()
        yield process


def nest(levels: int) -> Any:
    """An empty list nested `levels` deep (`[[]]` is 2)."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def v2_bytes(*documents: str) -> dict[str, Any]:
    """A V2 request with BYTES JSON documents for the JSON model."""
    n = len(documents)
    return {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [n], "data": documents}]}


def error_text(response: httpx.Response) -> str:
    """The message of an error in any of the three shapes."""
    error = response.json()["error"]
    return error if isinstance(error, str) else str(error["message"])


# ------------------------------------------------------------------ deep JSON, one rule


@pytest.mark.parametrize(
    ("path", "body", "status", "shape"),
    [
        ("/models/rows/predict", DEEP, 422, "native"),
        ("/v2/models/rows/infer", DEEP, 400, "v2"),
        ("/v2/models/rows/versions/1/infer", json.dumps(v2_bytes(DEEP)), 400, "v2"),
        ("/v2/repository/index", DEEP, 400, "v2"),
        ("/v2/repository/models/rows/load", DEEP, 400, "v2"),
        ("/v1/embeddings", DEEP, 400, "openai"),
    ],
)
def test_fifty_thousand_brackets_are_a_client_error_in_the_protocols_shape(
    client: TestClient, path: str, body: str, status: int, shape: str
) -> None:
    """50,000 `[` (in the body, or in a BYTES JSON document for a JSON model) is answered
    with the route's status for a malformed body and a message naming the nesting limit, in
    that protocol's error shape; never a 500 RecursionError. The server keeps serving."""
    response = client.post(path, content=body, headers={"content-type": "application/json", **AUTH})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if shape == "v2":
        assert isinstance(error, str) and TOO_DEEP in error
    elif shape == "openai":
        assert error["type"] == "invalid_request_error" and TOO_DEEP in error["message"]
    else:
        assert error["type"] == "bad_input" and TOO_DEEP in error["message"]
    assert client.post("/models/rows/predict", json={"inputs": [[1, 2]]}).status_code == 200


def deep_requests(levels: int) -> list[tuple[str, Any]]:
    """Requests to every JSON route whose body (or BYTES document) nests `levels` deep."""
    return [
        ("/models/rows/predict", {"inputs": [nest(levels - 2)]}),
        ("/v2/models/rows/infer", v2_bytes(json.dumps(nest(levels)))),
        (
            "/v2/models/rows/infer",
            {**v2_bytes("[1]"), "parameters": {"extra": nest(levels - 2)}},
        ),
        ("/v2/repository/index", {"ready": False, "extra": nest(levels - 1)}),
        ("/v1/embeddings", {"model": "echo", "input": "x", "user": nest(levels - 1)}),
    ]


def test_every_json_route_takes_the_same_nesting_and_refuses_one_level_more(
    client: TestClient,
) -> None:
    """One depth rule on every route: JSON nested exactly MAX_DEPTH levels is read (and
    answered as usual: 200, or the route's own error for an embedding request to a text
    model), one level more is refused as too deep on each of them."""
    for path, body in deep_requests(MAX_DEPTH):
        response = client.post(path, json=body)
        if path == "/v1/embeddings":  # read, then refused for the model, not the nesting
            assert response.status_code == 400 and "does not make embeddings" in error_text(
                response
            )
        else:
            assert response.status_code == 200, (path, response.text)
    for path, body in deep_requests(MAX_DEPTH + 1):
        response = client.post(path, json=body)
        assert response.status_code in (400, 422), (path, response.text)
        assert TOO_DEEP in error_text(response), (path, response.text)


def test_brackets_inside_strings_are_text_not_nesting(client: TestClient) -> None:
    """Brackets in a string (an escaped quote before them too) are not counted as nesting:
    a text of 1,000 `[` is predicted on the native and V2 routes, as any other text."""
    text = '\\"' + "[" * 1000 + '"{'
    response = client.post("/models/echo/predict", json={"inputs": [text]})
    assert response.status_code == 200, response.text
    request = v2_tensor("BYTES", [1], [text], name="text")
    response = client.post("/v2/models/echo/infer", json=request)
    assert response.status_code == 200, response.text


def test_tritonclient_gets_a_400_for_a_deep_binary_json_document(server: Process) -> None:
    """A BYTES tensor of JSON documents sent by tritonclient in binary: a document nested
    too deep is the client's error (InferenceServerException with the nesting message),
    and the same client's shallow document is served."""
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60) as c:
        for document, ok in ((json.dumps(nest(MAX_DEPTH)), True), (DEEP, False)):
            tensor = triton.InferInput("input", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([document.encode()], dtype=np.object_))
            if ok:
                assert c.infer("rows", [tensor]).as_numpy("output").shape == (1,)
                continue
            with pytest.raises(InferenceServerException) as info:
                c.infer("rows", [tensor])
            assert info.value.status() == "400" and TOO_DEEP in info.value.message()
        assert c.is_server_live()


def test_the_openai_client_gets_a_bad_request_for_a_body_nested_too_deep(
    server: Process,
) -> None:
    """The openai client's request with a field nested one level past the rule is a
    BadRequestError in OpenAI's error shape, naming the limit; the server keeps serving."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="vectors", input="x", extra_body={"user": nest(MAX_DEPTH)})
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error" and TOO_DEEP in info.value.message
    assert [m.id for m in client.models.list()] == ["vectors"]


# ------------------------------------------------------------------ V2 tensors that do not fit


def v2_tensor(datatype: str, shape: list[int], data: Any, name: str = "input") -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "says"),
    [
        ("FP32", [2, 2], [[1, 2, 3], [4]], "data[0] has 3 elements where shape [2, 2] needs"),
        ("FP32", [2, 2], [1, [2, 3], 4], "data has 3 elements where shape [2, 2] needs a list"),
        ("FP32", [2, 2], [[1, 2], 3], "data[1] is not a list"),
        ("FP32", [1, 4], [[[1, 2, 3, 4]]], "data[0] has 1 element where shape [1, 4] needs"),
        ("FP32", [1, 1], [[[5]]], "data[0][0] is a list of 1 (nested deeper than the shape)"),
        ("FP32", [1, 2], [True, False], "data[0] is true; FP32 takes numbers"),
        ("FP32", [1, 2], [[1, False]], "data[0][1] is false; FP32 takes numbers"),
        ("FP32", [1, 1], [1e39], "outside FP32's range"),
        ("FP16", [1, 1], [70000], "outside FP16's range"),
        ("INT8", [1, 1], [10**400], "an integer of about 401 digits, outside INT8's range"),
        ("INT8", [1, 2], [127, 128], "data[1] is 128, outside INT8's range -128 to 127"),
        ("UINT8", [1, 1], [-1], "outside UINT8's range 0 to 255"),
        ("INT32", [1, 1], [1.5], "is 1.5; INT32 takes integers"),
        ("INT64", [1, 1], [True], "is true; INT64 takes integers"),
        ("BOOL", [1, 1], [1], "is 1; BOOL takes only true or false"),
    ],
)
def test_json_tensor_data_must_fit_its_shape_and_datatype(
    client: TestClient, datatype: str, shape: list[int], data: Any, says: str
) -> None:
    """Nested data that does not match the declared shape (ragged rows are not re-chunked
    into the shape), and values of the wrong kind or outside the datatype's range, are a
    400 in the V2 error shape naming the element, before the model runs."""
    response = client.post("/v2/models/rows/infer", json=v2_tensor(datatype, shape, data))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and says in error, error
    assert client.get("/models/rows").json()["state"] == "unloaded"  # refused before a load


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "rows"),
    [
        ("FP32", [2, 2], [[1.5, 2], [3, 4]], [[1.5, 2], [3, 4]]),
        ("FP32", [2, 2], [1.5, 2, 3, 4], [[1.5, 2], [3, 4]]),  # flat, row-major (the spec)
        ("INT8", [1, 2], [-128, 127], [[-128, 127]]),
        ("UINT64", [1, 1], [2**64 - 1], [[2**64 - 1]]),
        ("INT32", [1, 2], [3.0, 4], [[3, 4]]),  # an integral float is that integer
        ("FP16", [1, 1], [65504], [[65504]]),
    ],
)
def test_json_tensor_data_that_fits_gives_the_native_predictions(
    client: TestClient, datatype: str, shape: list[int], data: Any, rows: Any
) -> None:
    """Flat data of the shape's element count and data nested exactly as the shape, with
    values of the datatype's kind at its limits, arrive as the rows the shape describes."""
    response = client.post("/v2/models/rows/infer", json=v2_tensor(datatype, shape, data))
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    native = client.post("/models/rows/predict", json={"inputs": rows}).json()["predictions"]
    assert [json.loads(d) for d in output["data"]] == native


def test_tritonclient_json_tensors_are_still_accepted(server: Process) -> None:
    """tritonclient sends JSON tensor data flat: INT8 at its limits and FP32 rows are served
    as the native API serves the same rows."""
    rows = np.array([[-128, 127], [0, 5]], dtype=np.int8)
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60) as c:
        tensor = triton.InferInput("input", list(rows.shape), "INT8")
        tensor.set_data_from_numpy(rows, binary_data=False)
        wanted = [triton.InferRequestedOutput("output", binary_data=False)]
        served = c.infer("rows", [tensor], outputs=wanted).as_numpy("output")
    native = httpx.post(f"{server.url}/models/rows/predict", json={"inputs": rows.tolist()})
    assert [json.loads(d) for d in served] == native.json()["predictions"]


# ------------------------------------------------------------------ numbers in V2 JSON

FINITE = "every number must be finite (no NaN, Infinity or overflowing exponents such as 1e999)"


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("[5.1, 3.5, NaN, 0.2]", f"document[2] is nan: {FINITE}"),
        ('{"a": [1, Infinity]}', f"document['a'][1] is inf: {FINITE}"),
        ("-Infinity", f"document is -inf: {FINITE}"),
        ("[1e999, 1, 1, 1]", f"document[0] is inf: {FINITE}"),
        (
            f"[{10**400}]",
            "document[0] is an integer larger than any 64-bit float (about 1.8e308); "
            "send smaller numbers",
        ),
    ],
)
def test_numbers_in_a_bytes_json_document_follow_the_native_rule(
    client: TestClient, document: str, says: str
) -> None:
    """A BYTES tensor of JSON documents for a JSON model: a document holding NaN,
    Infinity, 1e999 or an integer beyond float64 is refused as the native route refuses
    it, but as a 400 in the V2 error shape naming the tensor's element and the number's
    place in it, before the model loads; the native route gives the same message (422)."""
    response = client.post("/v2/models/rows/infer", json=v2_bytes("[1, 2]", document))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, str), error
    assert error == f"element 1 of input 'input' of model 'rows': {says}", error
    native = client.post("/models/rows/predict", content=f'{{"inputs": {document}}}'.encode())
    assert native.status_code == 422, native.text
    assert says.removeprefix("document") in native.json()["error"]["message"]
    assert client.get("/models/rows").json()["state"] == "unloaded"  # refused before a load


def test_numbers_in_v2_parameters_follow_the_native_rule(client: TestClient) -> None:
    """NaN in an infer request's parameters (which go to the model) is a 400 naming the
    parameter, as the native route refuses it; the protocol's own parameters are not
    the model's."""
    body = {**v2_bytes("[1, 2]"), "parameters": {"scale": float("nan")}}
    response = client.post(
        "/v2/models/rows/infer", content=json.dumps(body, allow_nan=True).encode()
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == f"parameters['scale'] is nan: {FINITE}"
    assert client.get("/models/rows").json()["state"] == "unloaded"


def test_plain_numbers_in_bytes_json_documents_are_served(client: TestClient) -> None:
    """Documents whose numbers are finite (large, small, or the string "NaN") are served
    with the predictions the native route gives for the same rows."""
    rows = [[1e300, -2.5e-300, 7], [5, "NaN", 1e-400]]
    response = client.post("/v2/models/rows/infer", json=v2_bytes(*map(json.dumps, rows)))
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    native = client.post("/models/rows/predict", json={"inputs": rows}).json()["predictions"]
    assert [json.loads(d) for d in output["data"]] == native


def test_tritonclient_gets_a_400_for_non_finite_numbers(server: Process) -> None:
    """tritonclient, sending in binary: a BYTES JSON document holding NaN and an FP32
    tensor holding Infinity are each the client's error (400, naming the element), as
    the same values sent as JSON are; the same client's finite rows are served."""
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60) as c:
        document = triton.InferInput("input", [2], "BYTES")
        document.set_data_from_numpy(np.array([b"[1, 2]", b"[3, NaN]"], dtype=np.object_))
        with pytest.raises(InferenceServerException) as info:
            c.infer("rows", [document])
        assert info.value.status() == "400"
        assert "element 1 of input 'input' of model 'rows': document[1] is nan" in (
            info.value.message()
        )
        rows = np.array([[1, 2], [3, np.inf]], dtype=np.float32)
        numbers = triton.InferInput("input", list(rows.shape), "FP32")
        numbers.set_data_from_numpy(rows, binary_data=True)
        with pytest.raises(InferenceServerException) as info:
            c.infer("rows", [numbers])
        assert info.value.status() == "400"
        assert "input 'input': data[3] is Infinity; FP32 takes finite numbers" in (
            info.value.message()
        )
        finite = triton.InferInput("input", [1, 2], "FP32")
        finite.set_data_from_numpy(rows[:1], binary_data=True)
        assert c.infer("rows", [finite]).as_numpy("output").shape == (1,)
        assert c.is_server_live()


# ------------------------------------------------------------------ event ids


def open_events(server: Process, **options: Any) -> httpx.Response:
    """GET /events's first answer: its status, and for a stream its first event."""
    with httpx.stream("GET", f"{server.url}/events", timeout=30, **options) as response:
        if response.status_code != 200:
            response.read()
            return response
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "" and "data" in fields:
                break
            if line and not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value
        return httpx.Response(200, json=json.loads(fields["data"]))


@pytest.mark.parametrize(
    "options",
    [{"headers": {"Last-Event-ID": "-5"}}, {"params": {"after": "-100"}}],
    ids=["last-event-id", "after"],
)
def test_a_negative_event_id_is_a_400_not_a_false_gap(
    server: Process, options: dict[str, Any]
) -> None:
    """Event ids start at 1: a negative Last-Event-ID or ?after is a 400 saying what to
    send, not a replay that starts with a `gap` for events that never existed."""
    assert httpx.post(f"{server.url}/models/echo/predict", json={"inputs": "x"}).is_success
    response = open_events(server, **options)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "bad_request" and "an integer from 0" in error["message"]


def test_after_zero_replays_from_the_first_event_without_a_gap(server: Process) -> None:
    """?after=0 (before the first event) replays every kept event from id 1; no gap."""
    assert httpx.post(f"{server.url}/models/echo/predict", json={"inputs": "x"}).is_success
    first = open_events(server, params={"after": "0"}).json()
    assert first["id"] == 1 and first["type"] != "gap"
