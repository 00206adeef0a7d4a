"""Open Inference Protocol and OpenAI routes in process: tensor parsing, errors, statuses.

The real app with its lifespan and the fake loader; the clients from PyPI are driven against
a real server in test_protocol_clients.py.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.v2.infer_body import HEADER_LENGTH
from registry.config.schema import Config
from registry.loaders import fake

# request_timeout: how long the gated models' requests wait before their 503; the other
# models must load within it, so not so short that a busy machine's load misses it.
CONFIG = """
server: {memory_budget: 100MB, request_timeout: 1.5, admin_token: secret}
models:
  echo: {loader: fake, input: text, options: {size: 1MB}}
  rows: {loader: fake, options: {size: 1MB}}
  gated: {loader: fake, options: {size: 1MB, gate: v2-gate}}
  vectors: {loader: fake, task: sentence-embeddings, options: {size: 1MB, gate: v2-gate}}
"""
AUTH = {"Authorization": "Bearer secret"}


@pytest.fixture
def client(write_config: Callable[[str], Config]) -> Iterator[TestClient]:
    # The gate starts closed: the autouse fixture resets the fake loader's gates.
    with TestClient(create_app(write_config(CONFIG))) as test_client:
        yield test_client
    fake.open_gate("v2-gate")


def bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def binary_body(header: dict[str, object], data: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + data, {HEADER_LENGTH: str(len(head))}


def split_binary(body: bytes, header_length: str) -> tuple[dict[str, object], bytes]:
    size = int(header_length)
    head: dict[str, object] = json.loads(body[:size])
    return head, body[size:]


def test_server_metadata_advertises_both_extensions(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "model-registry-server"
    assert meta["extensions"] == ["binary_tensor_data", "model_repository"]
    assert client.get("/v2/health/live").status_code == 200


def test_binary_bytes_input_and_binary_output_round_trip(client: TestClient) -> None:
    items = [b"hello", "h\u00e9llo w\u00f6rld".encode()]
    data = bytes_tensor(*items)
    header = {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    body, headers = binary_body(header, data)
    response = client.post("/v2/models/echo/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    head, rest = split_binary(response.content, response.headers[HEADER_LENGTH])
    (output,) = head["outputs"]  # type: ignore[misc]
    assert output["name"] == "output" and output["shape"] == [2]
    assert len(rest) == output["parameters"]["binary_data_size"]
    native = client.post("/models/echo/predict", json={"inputs": [i.decode() for i in items]})
    expected = [json.dumps(p, separators=(",", ":")).encode() for p in native.json()["predictions"]]
    assert rest == bytes_tensor(*expected)


def test_fp32_rows_in_json_give_the_native_predictions(client: TestClient) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": rows}]}
    response = client.post("/v2/models/rows/versions/1/infer", json=request)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    native = client.post("/models/rows/predict", json={"inputs": rows}).json()["predictions"]
    assert [json.loads(d) for d in output["data"]] == native


@pytest.mark.parametrize(
    ("header", "data", "says"),
    [
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
         b"", None),  # a valid request, for contrast
        ({"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
         b"", "one input tensor named 'text'"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]},
         b"", "holds 2 elements but 'data' has 1"),
        ({"inputs": [{"name": "text", "datatype": "STRING", "shape": [1], "data": ["a"]}]},
         b"", "datatype 'STRING' is not one of"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                      "parameters": {"binary_data_size": 9}}]},
         b"\x05\x00\x00\x00ab", "runs past the end of the body"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                      "parameters": {"binary_data_size": 6}}]},
         b"\x05\x00\x00\x00ab", "runs past its data"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                      "parameters": {"binary_data_size": 5}}]},
         b"\x01\x00\x00\x00abc", "add up to 5"),
    ],
)  # fmt: skip
def test_malformed_tensors_are_400_in_the_protocol_shape(
    client: TestClient, header: dict[str, object], data: bytes, says: str | None
) -> None:
    body, headers = binary_body(header, data)
    response = client.post("/v2/models/echo/infer", content=body, headers=headers)
    if says is None:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400
    error = response.json()["error"]
    assert isinstance(error, str) and says in error, error


def test_an_unknown_requested_output_is_400_before_the_model_runs(client: TestClient) -> None:
    request = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1.0]}],
        "outputs": [{"name": "probabilities"}],
    }
    response = client.post("/v2/models/gated/infer", json=request)  # its load would hang
    assert response.status_code == 400
    assert response.json() == {
        "error": "model 'gated' has no output(s) ['probabilities']; it has ['output']"
    }


def test_header_length_past_the_body_is_400(client: TestClient) -> None:
    response = client.post("/v2/models/echo/infer", content=b"{}", headers={HEADER_LENGTH: "50"})
    assert response.status_code == 400
    assert "the body has 2 bytes" in response.json()["error"]


def test_unknown_model_and_version_are_404(client: TestClient) -> None:
    unknown = client.get("/v2/models/nope")
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": "model 'nope' is not in the registry; known models: echo, gated, rows, vectors"
    }
    assert client.post("/v2/models/nope/infer", json={"inputs": []}).status_code == 404
    version = client.get("/v2/models/echo/versions/2")
    assert version.status_code == 404 and "one version, '1'" in version.json()["error"]


def test_a_loading_model_is_503_with_retry_after(client: TestClient) -> None:
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    response = client.post("/v2/models/gated/infer", json=request)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "still loading" in response.json()["error"]
    assert client.get("/v2/models/gated/ready").status_code == 400
    fake.open_gate("v2-gate")


def test_repository_extension_needs_the_admin_token(client: TestClient) -> None:
    missing = client.post("/v2/repository/models/echo/load")
    assert missing.status_code == 401
    assert missing.json() == {
        "error": "missing or wrong admin token; send 'Authorization: Bearer <token>'"
    }
    assert client.get("/v2/models/echo/ready").status_code == 400
    loaded = client.post("/v2/repository/models/echo/load", headers=AUTH)
    assert loaded.status_code == 200, loaded.text
    assert client.get("/v2/models/echo/ready").status_code == 200
    index = client.post("/v2/repository/index", json={"ready": True}).json()
    assert index == [{"name": "echo", "version": "1", "state": "READY", "reason": ""}]
    config = {"parameters": {"config": "{}"}}
    refused = client.post("/v2/repository/models/echo/load", headers=AUTH, json=config)
    assert refused.status_code == 400 and "models.yaml" in refused.json()["error"]
    assert client.post("/v2/repository/models/echo/unload", headers=AUTH).status_code == 200
    assert client.get("/v2/models/echo/ready").status_code == 400


def test_openai_errors_have_openais_shape(client: TestClient) -> None:
    unknown = client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "message": "model 'nope' is not in the registry; known models: echo, gated, rows, vectors",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    wrong = client.post("/v1/embeddings", json={"model": "echo", "input": "x"})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["param"] == "model"
    assert "does not make embeddings" in wrong.json()["error"]["message"]
    tokens = client.post("/v1/embeddings", json={"model": "echo", "input": [[1, 2]]})
    assert tokens.json()["error"]["param"] == "input"
    extra = client.post("/v1/embeddings", json={"model": "echo", "input": "x", "foo": 1})
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "foo"
    (listed,) = client.get("/v1/models").json()["data"]
    assert listed["id"] == "vectors" and listed["object"] == "model"


def test_openai_loading_is_503_and_a_model_without_vectors_is_500(client: TestClient) -> None:
    loading = client.post("/v1/embeddings", json={"model": "vectors", "input": "x"})
    assert loading.status_code == 503
    assert int(loading.headers["retry-after"]) >= 1
    assert loading.json()["error"]["type"] == "server_error"
    assert loading.json()["error"]["code"] == "loading"
    fake.open_gate("v2-gate")
    client.post("/models/vectors/load", headers=AUTH)
    broken = client.post("/v1/embeddings", json={"model": "vectors", "input": "x"})
    assert broken.status_code == 500  # the fake returns labels, not vectors: not the client's fault
    assert broken.json()["error"]["message"] == (
        "model 'vectors' did not return one vector of numbers per input"
    )


def test_unserved_v2_paths_are_404_in_the_protocol_shape(client: TestClient) -> None:
    response = client.get("/v2/models/echo/stats")
    assert response.status_code == 404
    assert "is not served" in response.json()["error"]


def test_the_written_out_datatype_ranges_are_numpys() -> None:
    """The V2 range checks use limits written out (numpy is imported lazily): they match."""
    import numpy as np

    from app.v2.tensors import FLOATING, INTEGER, NUMERIC

    for name, limits in INTEGER.items():
        info = np.iinfo(NUMERIC[name])
        assert (limits.min, limits.max) == (int(info.min), int(info.max)), name
    for name, top in FLOATING.items():
        assert top == float(np.finfo(NUMERIC[name]).max), name
    kinds = {np.dtype(code).kind for name, code in NUMERIC.items() if name not in ("BOOL",)}
    assert set(INTEGER) | set(FLOATING) == set(NUMERIC) - {"BOOL"} and kinds == {"i", "u", "f"}
