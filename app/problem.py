"""The JSON body of every error answer, built in this one place.

`{"error": {"type": kind, "message": message, ...}}`: app/errors.py answers with it, and so do
the parts that write a response before the app runs (the upload limit, the header limit) and
the Ray gateway.
"""

from __future__ import annotations

import json
from typing import Any


def error_body(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    """The error shape: a type a program can switch on and a message that says what to do."""
    return {"error": {"type": kind, "message": message, **extra}}


def error_bytes(kind: str, message: str, **extra: Any) -> bytes:
    """The same, encoded, for responses written below the framework."""
    return json.dumps(error_body(kind, message, **extra)).encode()
