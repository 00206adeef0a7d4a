"""The unmodified clients from PyPI (tritonclient[http], openai) against a real server.

One `model-registry serve` process on 127.0.0.1 with the default models.yaml, stopped by
its PID; every protocol answer is compared with the native API's for the same input.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from support import ROOT, builders, digit_png
from tritonclient.utils import InferenceServerException

from devkit.server import Process, environ, serve

TOKEN = "protocol-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXTS = ["Der Hund ist sehr gut und schläft.", "The weather is lovely today."]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    env = environ(MODEL_REGISTRY_ADMIN_TOKEN=TOKEN)
    logs = tmp_path_factory.mktemp("protocol")
    process = serve(ROOT / "models.yaml", env=env, log_dir=logs)
    try:
        process.wait_live(timeout=60)
        process.wait_ready(timeout=120)  # the hot models (digits, langid) preload
        yield process
    finally:
        assert process.stop() == 0, process.log


@pytest.fixture
def client(server: Process) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=120) as c:
        yield c


def native(server: Process, name: str, inputs: Any) -> Any:
    response = httpx.post(
        f"{server.url}/models/{name}/predict", json={"inputs": inputs}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def native_image(server: Process, png: bytes) -> Any:
    files = {"file": ("digit.png", png, "image/png")}
    response = httpx.post(f"{server.url}/models/digits/predict", files=files, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def bytes_input(name: str, items: list[Any], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_), binary_data=binary)
    return tensor


def strings(array: Any) -> list[str]:
    """BYTES outputs: bytes when sent binary, str when sent in JSON."""
    return [item.decode() if isinstance(item, bytes) else item for item in array]


def outputs(*names: str, binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(n, binary_data=binary) for n in names]


def test_server_and_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    langid = client.get_model_metadata("langid")
    assert langid["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in langid["outputs"]] == ["label", "score"]
    assert client.get_model_metadata("digits")["inputs"][0]["name"] == "image"
    assert client.get_model_metadata("iris")["inputs"][0]["datatype"] == "FP32"
    assert client.get_model_metadata("minilm")["outputs"][0]["name"] == "embedding"
    assert client.is_model_ready("langid")


@pytest.mark.parametrize("binary", [True, False])
def test_langid_infer_equals_native_predict(
    server: Process, client: triton.InferenceServerClient, binary: bool
) -> None:
    """Binary tensors (tritonclient's default) and JSON tensors give the native predictions."""
    result = client.infer(
        "langid",
        [bytes_input("text", TEXTS, binary)],
        outputs=None if binary else outputs("label", "score", binary=False),
    )
    expected = native(server, "langid", TEXTS)
    assert strings(result.as_numpy("label")) == [p["label"] for p in expected]
    assert result.as_numpy("score").tolist() == [np.float32(p["score"]) for p in expected]
    raw = result.get_response()["outputs"]
    assert ("parameters" in raw[0]) is binary  # binary_data_size only for binary outputs


@pytest.mark.parametrize("binary", [True, False])
def test_digits_infer_equals_native_predict(
    server: Process, client: triton.InferenceServerClient, binary: bool
) -> None:
    """Encoded images: raw bytes in binary, base64 strings in JSON.

    One image per request is bit-identical to the native upload; two images in one request
    run as a batch of two, whose float scores may differ in the last bits (labels do not).
    """
    pngs = [digit_png(1500), digit_png(7)]
    items: list[Any] = pngs if binary else [base64.b64encode(p).decode() for p in pngs]
    wanted = outputs("label", "score", binary=binary)
    expected = [native_image(server, png) for png in pngs]
    for item, native_top5 in zip(items, expected, strict=True):
        one = client.infer("digits", [bytes_input("image", [item], binary)], outputs=wanted)
        assert one.as_numpy("label").shape == (1, 5)  # the pipeline's top 5, as the native API
        assert strings(one.as_numpy("label")[0]) == [p["label"] for p in native_top5]
        assert one.as_numpy("score")[0].tolist() == [np.float32(p["score"]) for p in native_top5]
    both = client.infer("digits", [bytes_input("image", items, binary)], outputs=wanted)
    assert [strings(row) for row in both.as_numpy("label")] == [
        [p["label"] for p in native_top5] for native_top5 in expected
    ]
    native_scores = [[p["score"] for p in native_top5] for native_top5 in expected]
    assert np.allclose(both.as_numpy("score"), native_scores, rtol=1e-3, atol=1e-6)
    assert strings(both.as_numpy("label")[0])[0] == str(builders().digit_label(1500))


@pytest.mark.parametrize("binary", [True, False])
def test_iris_fp32_infer_equals_native_predict(
    server: Process, client: triton.InferenceServerClient, binary: bool
) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 5.1, 1.8]]
    tensor = triton.InferInput("input", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.array(rows, dtype=np.float32), binary_data=binary)
    result = client.infer("iris", [tensor], outputs=outputs("output", binary=binary))
    documents = [json.loads(d) for d in strings(result.as_numpy("output"))]
    # The same inputs: FP32 carries 5.1 as 5.099999904632568, and the model standardises
    # in float64 before its float32 layers, so the native API gets the float32 values too.
    as_sent = np.array(rows, dtype=np.float32).tolist()
    assert documents == native(server, "iris", as_sent)
    assert [d["label"] for d in documents] == ["setosa", "virginica"]


def test_a_cold_model_loads_on_infer_and_the_repository_extension(
    server: Process, client: triton.InferenceServerClient
) -> None:
    client.unload_model("minilm", headers=AUTH)
    assert not client.is_model_ready("minilm")
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["minilm"]["state"] == "UNAVAILABLE"
    assert index["langid"]["state"] == "READY"

    result = client.infer("minilm", [bytes_input("text", TEXTS, True)])  # cold: loads now
    vectors = result.as_numpy("embedding")
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert vectors.tolist() == np.float32(native(server, "minilm", TEXTS)).tolist()
    assert client.is_model_ready("minilm")

    client.unload_model("minilm", headers=AUTH)
    assert not client.is_model_ready("minilm")
    client.load_model("minilm", headers=AUTH)
    assert client.is_model_ready("minilm")
    with pytest.raises(InferenceServerException) as refused:
        client.unload_model("minilm")  # no token
    assert refused.value.status() == "401"
    assert "admin token" in refused.value.message()
    assert client.is_model_ready("minilm")


def test_unknown_model_and_bad_tensor_errors(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nope")
    assert unknown.value.status() == "404"
    assert "model 'nope' is not in the registry" in unknown.value.message()
    assert not client.is_model_ready("nope")
    with pytest.raises(InferenceServerException) as infer_unknown:
        client.infer("nope", [bytes_input("text", ["x"], True)])
    assert infer_unknown.value.status() == "404"
    with pytest.raises(InferenceServerException) as bad:
        client.infer("langid", [bytes_input("sentence", ["x"], True)])
    assert bad.value.status() == "400"
    assert "one input tensor named 'text'" in bad.value.message()


@pytest.fixture
def oai(server: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_openai_embeddings_float_and_base64_equal_native(
    server: Process, oai: openai.OpenAI
) -> None:
    expected = native(server, "minilm", TEXTS)
    floats = oai.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    assert [d.embedding for d in floats.data] == expected
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.model == "minilm"

    default = oai.embeddings.create(model="minilm", input=TEXTS)  # asks for base64, decodes
    assert [d.embedding for d in default.data] == np.float32(expected).tolist()

    raw = oai.embeddings.create(model="minilm", input=TEXTS[1], encoding_format="base64")
    encoded = raw.data[0].embedding
    assert isinstance(encoded, str)
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    # One text is a batch of one (no padding to the longer text): compare with the same.
    assert decoded.tolist() == np.float32(native(server, "minilm", TEXTS[1])).tolist()


def test_openai_usage_counts_tokens_with_the_models_tokenizer(oai: openai.OpenAI) -> None:
    # [CLS] a man is eating food . [SEP]: 8 tokens (the MiniLM WordPiece tokenizer).
    one = oai.embeddings.create(model="minilm", input="A man is eating food.")
    assert one.usage.prompt_tokens == 8 and one.usage.total_tokens == 8
    two = oai.embeddings.create(model="minilm", input=["A man is eating food."] * 2)
    assert two.usage.prompt_tokens == 16


def test_openai_models_and_errors(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list()] == ["bert-memory-demo", "counter", "minilm"]
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.embeddings.create(model="nope", input="x")
    assert unknown.value.code == "model_not_found"
    assert "model 'nope' is not in the registry" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as wrong:
        oai.embeddings.create(model="langid", input="x")
    assert wrong.value.param == "model"
    with pytest.raises(openai.BadRequestError) as dims:
        oai.embeddings.create(model="minilm", input="x", dimensions=128)
    assert dims.value.param == "dimensions"
    assert "makes 384-dimensional embeddings and cannot shorten them" in dims.value.message
