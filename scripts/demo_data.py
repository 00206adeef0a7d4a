"""Data and shared training utilities for the demo models (see build_models.py).

The public helpers (``digit_image``, ``digit_label``, ``langid_sentence``) are what tests use
to make inputs exactly like the training data; they import only numpy, PIL, scikit-learn or
Faker when called.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image

SEED = 1234

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
LANGID_TRAIN_SEED = 0
LANGID_EVAL_SEED = 1_000_000
LANGID_SAMPLE_SEED = 2_000_000

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
def digits() -> tuple[Any, Any]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target


def digit_to_image(values: Any) -> Image.Image:
    """8x8 array of sklearn values (0..16) -> 32x32 RGB image, white on black."""
    import numpy as np
    from PIL import Image

    pixels = np.round(np.asarray(values) / 16.0 * 255.0).astype(np.uint8)
    small = Image.fromarray(pixels).convert("RGB")
    return small.resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BILINEAR)


def shift(values: Any, dy: int, dx: int) -> Any:
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
    images, _ = digits()
    return digit_to_image(images[check_digit_index(index)])


def digit_label(index: int) -> int:
    """Return the true class (0-9) of sklearn digit ``index``."""
    _, targets = digits()
    return int(targets[check_digit_index(index)])


def check_digit_index(index: int) -> int:
    if not 0 <= index < DIGITS_COUNT:
        raise IndexError(f"digit index {index} out of range 0..{DIGITS_COUNT - 1}")
    return index


def lorem_sentences(lang: str, seed: int, count: int) -> list[str]:
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
    return lorem_sentences(lang, LANGID_SAMPLE_SEED + seed, 1)[0]


# ============================================================================
# Shared build utilities
# ============================================================================


def seed_everything(seed: int = SEED) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@lru_cache(maxsize=1)
def configure_runtime() -> None:
    """Import torch/transformers once, set threads and silence noise."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call, unused-ignore]
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call, unused-ignore]
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


def train(
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


def accuracy_of(predicted: Sequence[object], expected: Sequence[object]) -> float:
    if len(predicted) != len(expected) or not expected:
        raise ValueError("accuracy needs two equally long, non-empty sequences")
    return sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)


def require(name: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise BuildError(f"{name} {value:.1%} is below the required {minimum:.0%}")


def label_config(labels: Sequence[str]) -> dict[str, Any]:
    """``num_labels``/``id2label``/``label2id`` config arguments for ``labels``."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
