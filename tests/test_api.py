"""The HTTP contract, through the real app and its lifespan, with real small models."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi.testclient import TestClient
from support import builders, digit_png, wait_for

from app.main import create_app
from registry.config.file import load_config
from registry.loaders import fake

ENTRY_KEYS = {
    "name",
    "task",
    "state",
    "hot",
    "pinned",
    "size_bytes",
    "in_flight",
    "load_count",
    "last_used",
    "load_seconds",
    "error",
}
TEXT_SHAPE = '{"inputs": "text" | ["text", ...], "parameters": {...}}'


@pytest.fixture(scope="module", name="builders")
def builders_fixture() -> ModuleType:
    return builders()


@pytest.fixture
def config_path(tmp_path: Path, model_store: Path) -> Path:
    corrupt = tmp_path / "corrupt-model"
    corrupt.mkdir()
    (tmp_path / "no-such-model").mkdir()  # exists for validation; removed once the app is up
    (corrupt / "config.json").write_text('{"model_type": "bert", "num_labels": ')
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    path = tmp_path / "models.yaml"
    path.write_text(
        f"""
server:
  memory_budget: 50MB
  max_upload_size: 200kB
  request_timeout: 10
models:
  digits:
    task: image-classification
    source: {model_store}/digits-resnet
    hot: true
  langid:
    task: text-classification
    source: {model_store}/langid-bert
    batch: {{max_size: 8, max_wait_ms: 2}}
  iris:
    loader: registry.demo.iris:load
    source: {model_store}/iris-mlp
    isolation: thread  # the HTTP contract; process models have tests/test_workers*.py
    input: json
  echo:
    loader: fake
    options: {{size: 1MB}}
  broken:
    task: text-classification
    source: {tmp_path}/no-such-model
  corrupt:
    task: text-classification
    source: {corrupt}
"""
    )
    return path


@pytest.fixture
def client(config_path: Path) -> Iterator[TestClient]:
    app = create_app(config_path)
    (config_path.parent / "no-such-model").rmdir()  # the files vanish after validation
    with TestClient(app) as test_client:
        yield test_client


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict) and {"type", "message"} <= set(error)
    return error


def test_models_lists_every_model_with_the_documented_fields(client: TestClient) -> None:
    body = client.get("/models").json()
    assert {"budget_bytes", "used_bytes", "models"} <= set(body)
    assert body["budget_bytes"] == 50 * 1000**2
    names = [m["name"] for m in body["models"]]
    assert names == ["broken", "corrupt", "digits", "echo", "iris", "langid"]
    for entry in body["models"]:
        assert set(entry) >= ENTRY_KEYS
        assert entry["state"] in {"unloaded", "loading", "loaded", "unloading", "failed"}
    one = client.get("/models/langid").json()
    assert one["name"] == "langid" and one["task"] == "text-classification"
    assert one["state"] == "unloaded" and one["load_count"] == 0 and one["last_used"] is None


def test_an_uploaded_digit_is_classified(client: TestClient, builders: ModuleType) -> None:
    indexes = range(builders.DIGITS_HELDOUT_START, builders.DIGITS_HELDOUT_START + 10)
    correct = 0
    for index in indexes:
        response = client.post(
            "/models/digits/predict",
            files={"file": ("digit.png", digit_png(index), "image/png")},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "digits"
        top = body["predictions"][0]
        assert set(top) == {"label", "score"} and 0 <= top["score"] <= 1
        correct += top["label"] == str(builders.digit_label(index))
    assert correct >= 9
    entry = client.get("/models/digits").json()
    assert entry["state"] == "loaded" and entry["load_count"] == 1
    assert entry["size_bytes"] > 50_000 and entry["last_used"] is not None


def test_text_is_classified_one_or_many_with_parameters(client: TestClient, builders) -> None:
    german = builders.langid_sentence("de", 1)
    french = builders.langid_sentence("fr", 2)
    one = client.post("/models/langid/predict", json={"inputs": german})
    assert one.status_code == 200, one.text
    assert one.json()["predictions"]["label"] == "de"
    many = client.post("/models/langid/predict", json={"inputs": [german, french]})
    assert [p["label"] for p in many.json()["predictions"]] == ["de", "fr"]
    top3 = client.post(
        "/models/langid/predict", json={"inputs": french, "parameters": {"top_k": 3}}
    )
    assert top3.status_code == 200, top3.text
    ranked = top3.json()["predictions"]
    assert len(ranked) == 3 and ranked[0]["label"] == "fr"
    assert ranked[0]["score"] >= ranked[1]["score"] >= ranked[2]["score"]


def test_a_text_longer_than_the_model_takes_is_truncated(client: TestClient) -> None:
    long_text = " ".join(["Der Hund schläft im Garten"] * 100)
    response = client.post("/models/langid/predict", json={"inputs": long_text})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"]["label"] == "de"


def test_a_custom_plain_pytorch_loader_serves_json(client: TestClient) -> None:
    response = client.post(
        "/models/iris/predict",
        json={
            "inputs": [
                [5.1, 3.5, 1.4, 0.2],
                {
                    "sepal_length": 6.7,
                    "sepal_width": 3.0,
                    "petal_length": 5.2,
                    "petal_width": 2.3,
                },
            ]
        },
    )
    assert response.status_code == 200, response.text
    labels = [p["label"] for p in response.json()["predictions"]]
    assert labels == ["setosa", "virginica"]
    bad = client.post("/models/iris/predict", json={"inputs": [1, 2]})
    assert bad.status_code == 422
    assert "each input must be 4 numbers" in error_of(bad)["message"]


def test_unknown_model_is_404_listing_known_names(client: TestClient) -> None:
    response = client.post("/models/nope/predict", json={"inputs": "x"})
    assert response.status_code == 404
    error = error_of(response)
    assert error["message"] == (
        "model 'nope' is not in the registry; known models: broken, corrupt, digits, echo, "
        "iris, langid"
    )
    assert client.get("/models/nope").status_code == 404


def test_the_predict_route_answers_like_the_router_around_it(client: TestClient) -> None:
    """The predict route is served below the router (app/http/fast_path.py); what it does not
    serve still gets the router's answers: another method is 405, a name with a slash is
    404, both with the JSON error body; and its own answers are the same JSON as before."""
    wrong_method = client.get("/models/langid/predict")
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["type"] == "http_error"
    no_route = client.post("/models/a/b/predict", json={"inputs": "x"})
    assert no_route.status_code == 404
    assert error_of(no_route)["type"]
    response = client.post("/models/echo/predict", json={"inputs": ["a"]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model"] == "echo" and set(body) == {"model", "predictions"}
    assert [set(p) for p in body["predictions"]] == [{"label", "score"}]


@pytest.mark.parametrize(
    ("files", "status", "expected"),
    [
        ({"file": ("x.png", b"this is not an image", "image/png")}, 422, "not an image PIL"),
        ({"file": ("x.png", b"", "image/png")}, 422, "the uploaded file is empty"),
        ({"image": ("x.png", b"\x89PNG", "image/png")}, 422, "multipart field 'file'"),
    ],
)
def test_bad_uploads_get_a_clear_4xx(client: TestClient, files, status, expected) -> None:
    response = client.post("/models/digits/predict", files=files)
    assert response.status_code == status
    assert expected in str(error_of(response)["message"])


def test_a_truncated_image_is_422(client: TestClient, builders: ModuleType) -> None:
    data = digit_png(0)
    response = client.post(
        "/models/digits/predict", files={"file": ("d.png", data[: len(data) // 2], "image/png")}
    )
    assert response.status_code == 422
    assert "broken or truncated" in str(error_of(response)["message"])


def test_json_to_an_image_model_and_a_file_to_a_text_model_are_415(client: TestClient) -> None:
    response = client.post("/models/digits/predict", json={"inputs": "x"})
    assert response.status_code == 415
    assert "multipart/form-data with the file in field 'file'" in str(error_of(response)["message"])
    response = client.post("/models/langid/predict", files={"file": ("a.txt", b"hallo")})
    assert response.status_code == 415
    assert "takes text" in str(error_of(response)["message"])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", f"the request body is empty; send JSON {TEXT_SHAPE}"),
        (b"{not json", "the body is not valid JSON"),
        (b'["a"]', "the body must be a JSON object"),
        (b'{"input": "hallo"}', "inputs: Field required; unknown key 'input'"),
        (b'{"inputs": 3}', 'takes text: "inputs" must be a string or a list of strings'),
        (b'{"inputs": []}', "'inputs' is an empty list"),
        (b'{"inputs": "a", "parameters": 3}', "parameters: Input should be an object"),
    ],
)
def test_bad_json_gets_422_saying_what_was_expected(client: TestClient, body, expected) -> None:
    response = client.post(
        "/models/langid/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert expected in str(error_of(response)["message"])


def test_an_upload_over_the_limit_is_413_by_header_and_by_stream(client: TestClient) -> None:
    big = b"\0" * 300_000
    response = client.post("/models/digits/predict", files={"file": ("big.png", big)})
    assert response.status_code == 413
    assert "larger than the 200.0 kB limit" in str(error_of(response)["message"])

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        for _ in range(40):
            yield b"\0" * 10_000

    response = client.post(
        "/models/langid/predict",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert client.get("/health/live").status_code == 200


def test_a_broken_model_fails_alone(client: TestClient, builders: ModuleType) -> None:
    response = client.post("/models/broken/predict", json={"inputs": "x"})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    error = error_of(response)
    assert error["type"] == "model_failed"
    assert "no-such-model does not exist" in str(error["message"])
    entry = client.get("/models/broken").json()
    assert entry["state"] == "failed" and "does not exist" in entry["error"]
    corrupt = client.post("/models/corrupt/predict", json={"inputs": "x"})
    assert corrupt.status_code == 503
    assert client.get("/models/corrupt").json()["state"] == "failed"
    ok = client.post("/models/langid/predict", json={"inputs": builders.langid_sentence("it", 3)})
    assert ok.status_code == 200
    assert client.post("/models/echo/predict", json={"inputs": ["a", "b"]}).status_code == 200


def test_readiness_waits_for_hot_models(config_path: Path) -> None:
    with config_path.open("a") as f:  # a hot model whose load waits until the test says so
        f.write("  gated:\n    loader: fake\n    hot: true\n    options: {gate: hot-load}\n")
    with TestClient(create_app(config_path)) as client:
        assert client.get("/health/live").json() == {"status": "live"}
        first = client.get("/health/ready")
        assert first.status_code == 503
        assert "gated" in first.json()["pending"]
        assert set(first.json()["pending"]) <= {"digits", "gated"}
        fake.open_gate("hot-load")
        # The limit is a bound on a hang, not a speed target.
        wait_for(lambda: client.get("/health/ready").status_code == 200, "ready", limit=60)
        assert client.get("/health/ready").json() == {
            "status": "ready",
            "pending": [],
            "failed": {},
        }


def test_preload_wait_serves_only_after_hot_models_loaded(config_path: Path) -> None:
    text = config_path.read_text().replace("  request_timeout: 10\n", "  preload: wait\n")
    config_path.write_text(text)
    with TestClient(create_app(load_config(config_path))) as client:
        assert client.get("/health/ready").status_code == 200
        assert client.get("/models/digits").json()["state"] == "loaded"


def test_64_concurrent_first_requests_over_http_cause_one_load(config_path: Path) -> None:
    app = create_app(config_path)

    async def stampede() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as http,
        ):
            requests = [
                http.post("/models/echo/predict", json={"inputs": f"t{i}"}) for i in range(64)
            ]
            responses = await asyncio.gather(*requests)
            responses.append(await http.get("/models/echo"))
            return responses

    responses = asyncio.run(stampede())
    assert [r.status_code for r in responses[:64]] == [200] * 64
    assert responses[64].json()["load_count"] == 1


def test_metrics_expose_the_budget_and_model_states(client: TestClient) -> None:
    assert client.post("/models/echo/predict", json={"inputs": "x"}).status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert "model_registry_budget_bytes 5e+07" in lines
    assert 'model_registry_model_state{model="echo",state="loaded"} 1.0' in lines
    assert 'model_registry_model_state{model="echo",state="unloaded"} 0.0' in lines
    assert 'model_registry_loads_total{model="echo"} 1.0' in lines
    assert 'model_registry_served_total{model="echo"} 1.0' in lines


def test_models_and_metrics_show_the_eviction_policy_and_priorities(client: TestClient) -> None:
    """GET /models and /metrics show the policy and each held model's priority."""
    assert client.post("/models/echo/predict", json={"inputs": "x"}).status_code == 200
    view = client.get("/models").json()
    assert view["eviction"] == "cost"  # the default
    echo = client.get("/models/echo").json()
    assert echo["eviction"] == "cost" and isinstance(echo["eviction_priority"], float)
    lines = client.get("/metrics").text.splitlines()
    assert 'model_registry_eviction_policy{policy="cost"} 1.0' in lines
    assert any(line.startswith('model_registry_eviction_priority{model="echo"} ') for line in lines)
