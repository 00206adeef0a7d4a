"""In-process baselines of the suite, each run in a process of its own.

    python -m bench.inproc '<job as JSON>'

prints one JSON line. torch and transformers are imported and set up first, exactly as the
server's loader does (registry/loaders/torch_setup.py: HF_HUB_OFFLINE=1,
TOKENIZERS_PARALLELISM=false, torch.set_num_threads(default_threads()), i.e. one thread per
core but one, unless "threads" is given), so no timed section pays an import and the baseline
computes with the server's thread count.

Jobs:
- {"mode": "cold", "warm": {"task", "dir"}, "task", "dir", "input", "repeats"}: build the warm
  pipeline first (as the server preloads its hot model), then time
  `transformers.pipeline(task, model=dir)`; then the first call and warm calls on `input`;
  then `repeats` more constructions after `del` + `gc.collect()` (a reload after an unload).
- {"mode": "loop", "task", "dir", "kind": "text"|"sentence"|"image", "files", "seconds"}:
  call the model on one input per call, in turn, for `seconds`; per-call latencies and the
  rate. A pipeline task is called as a user would for one input, `pipe(x)`; the
  `sentence-embeddings` task (not a transformers pipeline) is loaded with the registry's own
  loader (`registry.loaders.load_model`: AutoTokenizer + AutoModel + mean pooling) and called
  as `model.predict([x], {})`.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def setup(threads: int | None) -> Any:
    """Import and configure torch/transformers like the server; returns `pipeline`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from registry.loaders.torch_setup import configure, default_threads

    # The registry's loader (minilm) applies the configured count again on its first load.
    configure(threads)
    torch.set_num_threads(threads or default_threads())
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    from transformers import pipeline

    return pipeline


def cold(job: dict[str, Any], pipeline: Any) -> dict[str, Any]:
    """Time pipeline construction of a model, after a warm model was built."""
    warm = pipeline(job["warm"]["task"], model=job["warm"]["dir"])
    started = time.perf_counter()
    pipe = pipeline(job["task"], model=job["dir"])
    construct = time.perf_counter() - started
    started = time.perf_counter()
    pipe(job["input"])
    first_call = time.perf_counter() - started
    warm_calls = []
    for _ in range(5):
        started = time.perf_counter()
        pipe(job["input"])
        warm_calls.append(time.perf_counter() - started)
    repeats = []
    for _ in range(job.get("repeats", 0)):
        del pipe
        gc.collect()
        started = time.perf_counter()
        pipe = pipeline(job["task"], model=job["dir"])
        repeats.append(time.perf_counter() - started)
    del pipe, warm
    return {
        "construct_s": construct,
        "first_call_s": first_call,
        "warm_call_s": statistics.median(warm_calls),
        "repeat_construct_s": repeats,
    }


def embedding_model(source: str) -> Callable[[Any], Any]:
    """A sentence-embeddings model loaded by the registry's loader; one input per call."""
    from registry.config.schema import ModelSpec
    from registry.loaders import LoadContext, load_model
    from registry.sources import resolve_source

    spec = ModelSpec(task="sentence-embeddings", source=source)
    ctx = LoadContext("baseline", spec, resolve_source(source, Path.cwd()), Path.cwd())
    model = load_model(ctx)
    return lambda text: model.predict([text], {})


def loop(job: dict[str, Any], pipeline: Any) -> dict[str, Any]:
    """Sequential calls, one input each, for a while."""
    if job["kind"] == "image":
        from PIL import Image

        inputs: list[Any] = [Image.open(path).convert("RGB") for path in job["files"]]
    else:
        inputs = []
        for path in job["files"]:
            with open(path, encoding="utf-8") as f:
                inputs.append(json.load(f)["inputs"])
    if job["task"] == "sentence-embeddings":
        pipe = embedding_model(job["dir"])
    else:
        pipe = pipeline(job["task"], model=job["dir"])
    for i in range(20):  # warm-up
        pipe(inputs[i % len(inputs)])
    latencies = []
    i = 0
    started = time.perf_counter()
    deadline = started + job["seconds"]
    while True:
        before = time.perf_counter()
        if before >= deadline:
            break
        pipe(inputs[i % len(inputs)])
        latencies.append(time.perf_counter() - before)
        i += 1
    elapsed = time.perf_counter() - started
    return {"latencies_s": latencies, "calls": len(latencies), "seconds": elapsed}


def main() -> None:
    """Run the job given as JSON in argv[1]."""
    job = json.loads(sys.argv[1])
    pipeline = setup(job.get("threads"))
    import torch

    result = cold(job, pipeline) if job["mode"] == "cold" else loop(job, pipeline)
    result["torch_threads"] = torch.get_num_threads()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
