"""Whose fault is an exception raised by a model call: the client's input (4xx) or the model (5xx).

The Model protocol says a model raises ValueError or TypeError for inputs it cannot use, so
those become BadInput, naming the request parameter the message mentions. Anything else
(KeyError, IndexError, RuntimeError, ...) is a bug in the model or its loader until proven
otherwise: it becomes InferenceError, and the traceback goes to the log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from registry.errors import BadInput, InferenceError, RegistryError

log = logging.getLogger("registry")

CLIENT_ERRORS = (ValueError, TypeError)


def model_error(name: str, exc: BaseException, parameters: Mapping[str, Any]) -> RegistryError:
    """The registry error for `exc`, raised by model `name` on a request with `parameters`."""
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, CLIENT_ERRORS):
        text = str(exc) or type(exc).__name__
        named = mentioned_parameter(text, parameters)
        if named is not None:
            return BadInput(f"model {name!r} rejected parameter {named!r}: {text}")
        return BadInput(f"model {name!r} rejected the input: {text}")
    log.error("inference failed on %s", name, exc_info=(type(exc), exc, exc.__traceback__))
    return InferenceError(f"model {name!r} failed: {type(exc).__name__}: {exc}")


def mentioned_parameter(text: str, parameters: Mapping[str, Any]) -> str | None:
    """The first request parameter whose name appears as a word in `text`, if any."""
    for key in parameters:
        if re.search(rf"(?<![\w]){re.escape(str(key))}(?![\w])", text):
            return str(key)
    return None
