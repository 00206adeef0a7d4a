"""Checks of the pipeline parameters a request may send, before they reach the tokenizer or model.

transformers passes most of them straight to the tokenizer and the model, where a bad value
fails deep inside (`max_length: 1e20` is an OverflowError, `padding: max_length` past the
position embeddings an IndexError): each is checked here and answered with BadInput naming
the parameter. Parameters not listed here are left to the pipeline. With truncation off, a text
longer than the model takes fails inside the model too (a tensor size mismatch): `check_lengths`
counts its tokens first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from registry.errors import BadInput

Check = Callable[[Any], str | None]  # None when the value is fine, else what it must be

_TRUNCATION = ("longest_first", "only_first", "only_second", "do_not_truncate")
_PADDING = ("longest", "max_length", "do_not_pad")
_AGGREGATION = ("none", "simple", "first", "average", "max")
_FUNCTIONS = ("sigmoid", "softmax", "none")


def _int(low: int, high: int | None = None, *, nullable: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        bounds = f"from {low}" + (f" to {high}" if high is not None else "")
        what = f"an integer {bounds}" + (" or null" if nullable else "")
        if isinstance(value, bool) or not isinstance(value, int):
            return what
        if value < low or (high is not None and value > high):
            return what
        return None

    return check


def _number(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not low <= value <= high:
            return f"a number from {low:g} to {high:g}"
        return None

    return check


def _flag_or(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or value in choices:
            return None
        return "true, false or one of " + ", ".join(repr(c) for c in choices)

    return check


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _labels(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return None
    return "a non-empty string or list of strings"


def _template(value: Any) -> str | None:
    return None if isinstance(value, str) and "{}" in value else "a string containing {}"


def model_limits(pipe: Any) -> dict[str, int]:
    """The model's own bounds: tokens per input, vocabulary size (where it has them)."""
    limits: dict[str, int] = {}
    config = getattr(getattr(pipe, "model", None), "config", None)
    lengths = [
        getattr(config, "max_position_embeddings", None),
        getattr(getattr(pipe, "tokenizer", None), "model_max_length", None),
    ]
    known = [n for n in lengths if isinstance(n, int) and 0 < n < 1_000_000]
    if known:
        limits["max_length"] = min(known)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and vocab > 0:
        limits["vocab_size"] = vocab
    return limits


def checks_for(limits: Mapping[str, int]) -> dict[str, Check]:
    """The checks of the parameters the server knows, bounded by the model's limits."""
    max_length = limits.get("max_length")
    return {
        "max_length": _int(1, max_length),
        "stride": _int(0, max_length),
        "truncation": _flag_or(*_TRUNCATION),
        "padding": _flag_or(*_PADDING),
        "top_k": _int(1, limits.get("vocab_size"), nullable=True),
        "function_to_apply": _one_of(*_FUNCTIONS),
        "return_all_scores": _bool,
        "multi_label": _bool,
        "candidate_labels": _labels,
        "hypothesis_template": _template,
        "aggregation_strategy": _one_of(*_AGGREGATION),
        "threshold": _number(0.0, 1.0),
        "timeout": _number(0.0, 3600.0),
    }


def check_parameters(parameters: Mapping[str, Any], checks: Mapping[str, Check]) -> None:
    """Raise BadInput naming the first parameter whose value the model cannot take."""
    for key, value in parameters.items():
        check = checks.get(key)
        wanted = check(value) if check is not None else None
        if wanted is not None:
            raise BadInput(f"parameter {key!r} must be {wanted}; got {value!r:.60}")
    stride, max_length = parameters.get("stride"), parameters.get("max_length")
    if isinstance(stride, int) and isinstance(max_length, int) and stride >= max_length > 0:
        raise BadInput(f"parameter 'stride' ({stride}) must be less than max_length ({max_length})")


def truncates(kwargs: Mapping[str, Any]) -> bool:
    """Whether the tokenizer will cut a text to the model's length under these call arguments."""
    value = kwargs.get("truncation", False)
    return value is not False and value != "do_not_truncate"


def check_lengths(tokenizer: Any, inputs: Sequence[Any], max_length: int) -> None:
    """Raise BadInput for the first text with more tokens than the model takes (truncation off).

    Texts and `{"text", "text_pair"}` items are counted as the pipeline tokenizes them, special
    tokens included; other inputs are left to the pipeline's own checks.
    """
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            encoded = tokenizer(item, truncation=False)
        elif isinstance(item, Mapping) and isinstance(item.get("text"), str):
            pair = item.get("text_pair")
            encoded = tokenizer(item["text"], pair if isinstance(pair, str) else None)
        else:
            continue
        tokens = len(encoded["input_ids"])
        if tokens > max_length:
            which = "the text" if len(inputs) == 1 else f"text {index}"
            raise BadInput(
                f"{which} has {tokens} tokens and the model takes at most {max_length} "
                "(parameter 'truncation' is off); send a shorter text, or leave 'truncation' "
                "on to have it cut to fit"
            )
