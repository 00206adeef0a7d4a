"""JSON from clients: one parser and one nesting rule for every route.

The native predict route, the Open Inference Protocol (its inference header, its BYTES
tensors of JSON documents, its repository bodies) and the OpenAI routes all parse JSON here.
Lists and objects may nest at most MAX_DEPTH levels (`[]` is one level, `{"a": [1]}` two):
deeper JSON is refused before any code walks it (Python's own parser and any recursive
walk of the value would end in a RecursionError). The parser is pydantic-core's (Rust, no
recursion in Python, and faster than `json.loads`); its own limit of about 200 levels only
backs the rule up. A refusal is `MalformedJSON`, a `BadInput` (the native 422); each
protocol re-raises it as its own error for a malformed body.
"""

from __future__ import annotations

import re
from typing import Any

import pydantic_core

from registry.errors import BadInput

MAX_DEPTH = 64  # levels of lists and objects in one JSON document
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # linear on valid JSON: no backtracking
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


class MalformedJSON(BadInput):
    """JSON a client sent cannot be read: a syntax error, or nesting deeper than MAX_DEPTH."""


def parse(raw: bytes | str, what: str = "the body") -> Any:
    """The JSON value in `raw`, or MalformedJSON naming `what` and what is wrong with it."""
    text = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    try:
        value = pydantic_core.from_json(text)
    except ValueError as exc:
        if "recursion limit" in str(exc):  # deeper than the parser's own backstop
            raise _too_deep(what) from None
        raise MalformedJSON(f"{what} is not valid JSON ({exc})") from None
    if text.count(b"[") + text.count(b"{") > MAX_DEPTH and depth(text) > MAX_DEPTH:
        raise _too_deep(what)
    return value


def depth(text: bytes) -> int:
    """How many levels lists and objects nest in valid JSON text (brackets in strings skipped).

    Counted on the bytes (a regex, a translate and a cumulative sum, all in C), not by
    walking the parsed value element by element.
    """
    import numpy as np  # only for bodies with many brackets, not at startup

    brackets = np.frombuffer(_STRING.sub(b"", text).translate(None, _NOT_BRACKET), np.uint8)
    if not len(brackets):
        return 0
    steps = np.where(np.isin(brackets, np.frombuffer(b"[{", dtype=np.uint8)), 1, -1)
    return int(np.cumsum(steps).max())


def _too_deep(what: str) -> MalformedJSON:
    return MalformedJSON(
        f"{what} nests lists and objects more than {MAX_DEPTH} levels deep; send flatter "
        f"JSON (at most {MAX_DEPTH} levels)"
    )
