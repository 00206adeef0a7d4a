"""Process models with real models and a real server process."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import builders, digit_png, running, wait_for
from worker_support import children_of

from devkit.server import serve
from registry.config.schema import Config
from registry.payload import ImageRequest, TextRequest

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rpartition(")")[2].split()[0] != "Z"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def spare_of(url: str) -> dict[str, Any]:
    """GET /models' spare_worker (a starting one counts as not ready)."""
    spare = httpx.get(f"{url}/models").json()["spare_worker"]
    return {"state": "none", "pid": None} if spare is None else dict(spare)


@pytest.mark.anyio
async def test_langid_and_digits_answer_the_same_in_a_worker(
    write_config: Callable[[str], Config], model_store: Path
) -> None:
    """Predictions of langid and digits as process models equal those of thread models."""
    entries = ""
    for mode in ("thread", "process"):
        entries += (
            f"  langid-{mode}:\n    task: text-classification\n"
            f"    source: {model_store}/langid-bert\n    isolation: {mode}\n"
            f"  digits-{mode}:\n    task: image-classification\n"
            f"    source: {model_store}/digits-resnet\n    isolation: {mode}\n"
        )
    config = write_config(f"server:\n  watch: false\nmodels:\n{entries}")
    sentences = [builders().langid_sentence(lang, 3) for lang in ("en", "de", "fr", "pl")]
    async with running(config) as manager:
        for text in sentences:
            request = TextRequest(inputs=text)
            thread = await manager.predict("langid-thread", request)
            process = await manager.predict("langid-process", request)
            assert process == thread
        batch = TextRequest(inputs=sentences)
        assert await manager.predict("langid-process", batch) == await manager.predict(
            "langid-thread", batch
        )
        for index in range(5):
            image = ImageRequest(data=digit_png(index))
            thread = await manager.predict("digits-thread", image)
            process = await manager.predict("digits-process", image)
            assert process == thread
        assert manager.describe("langid-process").isolation == "process"
        assert manager.describe("langid-process").worker.pid > 0
        assert manager.describe("digits-thread").worker is None


def test_workers_exit_when_the_server_is_sigkilled(tmp_path: Path) -> None:
    """Orphans: SIGKILL the server; its forkserver, workers and spare worker are gone within
    seconds."""
    config = tmp_path / "models.yaml"
    config.write_text(
        "server:\n  watch: false\nmodels:\n"
        "  w1:\n    loader: fake\n    isolation: process\n    hot: true\n"
        "  w2:\n    loader: fake\n    isolation: process\n    hot: true\n"
        "    options: {hang_on: '*'}\n"
    )
    with serve(config) as server:
        server.wait_ready(timeout=120)
        pids = [httpx.get(f"{server.url}/models/{n}").json()["worker_pid"] for n in ("w1", "w2")]
        # w2 is busy in a call that never returns: only the parent-death signal can end it.
        with httpx.Client(timeout=0.5) as client, contextlib.suppress(httpx.TimeoutException):
            client.post(f"{server.url}/models/w2/predict", json={"inputs": "x"})
        forkserver = parent_of(pids[0])
        wait_for(lambda: spare_of(server.url)["state"] == "ready", "the spare is ready", 60)
        spare = spare_of(server.url)["pid"]
        assert sorted(children_of(forkserver)) == sorted([*pids, spare])
        server.send(signal.SIGKILL)
        server.wait(timeout=10)
    everyone = (*pids, spare, forkserver)
    with contextlib.suppress(AssertionError):  # the assertion below names those left
        wait_for(lambda: not any(alive(pid) for pid in everyone), "the workers exit", limit=10)
    left = [pid for pid in everyone if alive(pid)]
    for pid in left:  # do not leak them into the rest of the run, then fail
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"still running after the server was SIGKILLed: {left}"
