"""What a hostile client sends: crafted images, odd numbers."""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import running

from app.main import create_app
from registry.config.file import load_config
from registry.errors import BadInput
from registry.payload import ImageRequest

CUSTOM = """
class Model:
    def predict(self, inputs, parameters):
        if inputs[0] == "key":
            return [{}["missing"]]  # a bug in the model: not the client's fault
        if inputs[0] == "value":
            raise ValueError("temperature must be below 2")
        return [item for item in inputs]


def load(ctx):
    return Model()
"""


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def crafted_png(tiny_chunks: int) -> bytes:
    """A valid 1x1 PNG padded with `tiny_chunks` empty private chunks before its pixels."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    padding = chunk(b"abCd", b"") * tiny_chunks
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
    return b"\x89PNG\r\n\x1a\n" + header + padding + pixels + chunk(b"IEND", b"")


def broken_dds() -> bytes:
    """A DDS file whose pixel format flags PIL does not know (it raises NotImplementedError)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="DDS")
    data = bytearray(buffer.getvalue())
    data[80:84] = struct.pack("<I", 0)  # DDS_PIXELFORMAT.dwFlags
    return bytes(data)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    (tmp_path / "custom.py").write_text(CUSTOM)
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {memory_budget: 50MB, watch: false}\n"
        "models:\n"
        "  picture: {loader: fake, input: image, options: {size: 1kB}}\n"
        "  numbers: {loader: fake, input: json, options: {size: 1kB}}\n"
        "  custom: {loader: 'custom:load', input: json}\n"
    )
    return path


@pytest.fixture
def client(config_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(config_path)) as test_client:
        yield test_client


@pytest.mark.anyio
async def test_a_png_of_800k_tiny_chunks_is_refused_off_the_event_loop(config_path: Path) -> None:
    """The crafted PNG is decoded in a thread, and refused by a bound on PIL's work.

    The loop's lag while it is being refused is compared with what parsing that file costs
    PIL in this process: on the loop, the lag was at least that.
    """
    data = crafted_png(800_000)
    assert len(data) < 10 * 1000**2  # under the default upload limit
    started = time.perf_counter()
    with Image.open(io.BytesIO(data)) as image:  # what PIL alone spends walking the chunks
        assert image.size == (1, 1)
    parse_seconds = time.perf_counter() - started
    async with running(load_config(config_path)) as manager:
        loop = asyncio.get_running_loop()
        lags: list[float] = []
        done = asyncio.Event()
        probing = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(0.002)  # the probe's tick: the lag is measured against it
                lags.append(loop.time() - before - 0.002)
                probing.set()

        prober = asyncio.create_task(probe())
        await asyncio.wait_for(probing.wait(), 10)
        try:
            with pytest.raises(BadInput, match="too many chunks or markers"):
                await manager.predict("picture", ImageRequest(data=data))
        finally:
            done.set()
            await prober
    assert max(lags) < parse_seconds / 2, (max(lags), parse_seconds)


@pytest.mark.anyio
async def test_a_normal_png_still_decodes(config_path: Path) -> None:
    """The bound leaves ordinary images alone (a few chunks, a big one too)."""
    buffer = io.BytesIO()
    Image.effect_noise((1500, 1500), 64).convert("RGB").save(buffer, format="PNG")
    async with running(load_config(config_path)) as manager:
        for data in (crafted_png(100), buffer.getvalue()):
            result = await manager.predict("picture", ImageRequest(data=data))
            assert set(result) == {"label", "score"}


def test_a_broken_dds_image_is_422(client: TestClient) -> None:
    """PIL's NotImplementedError on a malformed DDS file is the client's error."""
    response = client.post(
        "/models/picture/predict", files={"file": ("x.dds", broken_dds(), "image/x-dds")}
    )
    assert response.status_code == 422, response.text
    assert "NotImplementedError" in response.json()["error"]["message"]


def test_a_bug_in_model_code_is_a_500_with_a_traceback_in_the_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A KeyError from model code is no longer called the client's fault (was 422)."""
    with caplog.at_level(logging.ERROR, logger="registry"):
        response = client.post("/models/custom/predict", json={"inputs": ["key"]})
    assert response.status_code == 500, response.text
    assert response.json()["error"]["type"] == "inference_error"
    assert "KeyError" in response.json()["error"]["message"]
    failures = [r for r in caplog.records if r.getMessage() == "inference failed on custom"]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_a_value_error_naming_a_parameter_is_a_422_naming_it(client: TestClient) -> None:
    """The 4xx names the request parameter that the model's message is about."""
    body = {"inputs": ["value"], "parameters": {"temperature": 5}}
    response = client.post("/models/custom/predict", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"] == (
        "model 'custom' rejected parameter 'temperature': temperature must be below 2"
    )


@pytest.mark.parametrize(
    ("body", "position", "shown"),
    [
        (b'{"inputs": [[5.1, 3.5, NaN, 0.2]]}', "inputs[0][2]", "nan"),
        (b'{"inputs": [[5.1, Infinity, 1, 1]]}', "inputs[0][1]", "inf"),
        (b'{"inputs": [[-Infinity, 1, 1, 1]]}', "inputs[0][0]", "-inf"),
        (b'{"inputs": [[5.1, 3.5, 1.4, 1e999]]}', "inputs[0][3]", "inf"),
        (b'{"inputs": {"a": [1, NaN]}}', "inputs['a'][1]", "nan"),
        (b'{"inputs": [1], "parameters": {"t": NaN}}', "parameters['t']", "nan"),
    ],
)
def test_non_finite_numbers_are_422_naming_the_position(
    client: TestClient, body: bytes, position: str, shown: str
) -> None:
    """NaN, Infinity and 1e999 never reach a model."""
    response = client.post(
        "/models/numbers/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"] == (
        f"{position} is {shown}: every number must be finite (no NaN, Infinity or overflowing "
        "exponents such as 1e999)"
    )


def test_an_integer_beyond_float_range_is_422(client: TestClient) -> None:
    """Items 8 and 17: iris-style input [[10**400, 1, 1, 1]] is refused, naming its position."""
    body = b'{"inputs": [[' + str(10**400).encode() + b", 1, 1, 1]]}"
    response = client.post(
        "/models/numbers/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("inputs[0][0] is an integer larger than any 64-bit float")
    fine = client.post("/models/numbers/predict", json={"inputs": [[1e300, 1, "NaN", 1]]})
    assert fine.status_code == 200, fine.text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"max_length": 1e20}, "max_length"),
        ({"stride": -3}, "stride"),
        ({"max_length": -5}, "max_length"),
        ({"padding": "max_length", "max_length": 100000}, "max_length"),
        ({"top_k": "all"}, "top_k"),
        ({"truncation": "sometimes"}, "truncation"),
    ],
)
def test_bad_pipeline_parameters_are_422_naming_them(
    tmp_path: Path, model_store: Path, parameters: dict[str, object], named: str
) -> None:
    """Parameters that made langid's tokenizer or model raise (500) are checked first."""
    path = tmp_path / "models.yaml"
    path.write_text(
        "server: {watch: false}\nmodels:\n"
        f"  langid: {{task: text-classification, source: {model_store}/langid-bert}}\n"
    )
    with TestClient(create_app(path)) as client:
        body = {"inputs": "Guten Morgen, wie geht es dir?", "parameters": parameters}
        response = client.post("/models/langid/predict", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["message"].startswith(f"parameter {named!r} must be ")
        fine = client.post(
            "/models/langid/predict",
            json={"inputs": "Guten Morgen", "parameters": {"max_length": 16, "top_k": 2}},
        )
        assert fine.status_code == 200, fine.text
