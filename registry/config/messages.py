"""What a user reads when models.yaml breaks the schema: one line per problem, naming the
model and the field, with a "did you mean" for a misspelt key."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from registry.config.schema import DERIVED_KEYS, NAME_PATTERN, Document, ModelSpec


def name_problems(models: object) -> list[str]:
    """A problem for each key under `models:` that is not a valid model name."""
    if not isinstance(models, dict):
        return []
    return [
        f"model {name!r}: a name may use letters, digits, '.', '_' and '-' (at most 64), "
        "and must start with a letter or digit"
        for name in models
        if not isinstance(name, str) or not NAME_PATTERN.match(name)
    ]


def describe(error: ErrorDetails) -> str:
    """One pydantic validation error as `model 'x', field 'y': what is wrong`."""
    loc = [str(p) for p in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        message = f"unknown key; {hint}allowed keys: {', '.join(allowed)}"
    if len(loc) >= 2 and loc[0] == "models":
        field = ".".join(loc[2:])
        where = f"model {loc[1]!r}" + (f", field {field!r}" if field else "")
    else:
        where = ".".join(loc) or "top level"
    return f"{where}: {message}"


def _allowed_keys(parent: list[str]) -> list[str]:
    cls: type[BaseModel] = Document
    parts = parent[2:] if parent[:1] == ["models"] and len(parent) >= 2 else parent
    if parent[:1] == ["models"] and len(parent) >= 2:
        cls = ModelSpec
    for part in parts:
        field = cls.model_fields.get(part)
        nested = _model_in(field.annotation) if field else None
        if nested is None:
            break
        cls = nested
    return sorted(key for key in cls.model_fields if key not in DERIVED_KEYS)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
