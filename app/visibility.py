"""What anonymous callers see: no server file paths; the admin token shows everything.

Error messages often quote an exception that names a file (`model directory /srv/x does not
exist`). Anonymous callers get such paths shortened to their last part (`.../x`) and do not
see `source` or `config_path` in GET /models; a request with the admin token sees it all,
and the log always has the full text.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from fastapi import Request

from registry.admin_token import admin_token

# An absolute path of two or more parts, not part of a URL or a relative path.
_ABSOLUTE = re.compile(r"(?<![\w.~/:-])/(?:[^\s'\"`()<>,;/]+/)+[^\s'\"`()<>,;/]*")
HIDDEN_KEYS = ("source", "config_path")


def bearer_matches(request: Request, token: str) -> bool:
    """True when the request's `Authorization: Bearer` token is `token`."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def is_admin(request: Request) -> bool:
    """True when the request carries the configured admin token."""
    manager = getattr(request.app.state, "manager", None)
    if manager is None:
        return False
    token = admin_token(manager.config.server)
    return token is not None and bearer_matches(request, token)


def redact(text: str) -> str:
    """`text` with absolute paths cut to their last part."""
    return _ABSOLUTE.sub(_short, text)


def _short(match: re.Match[str]) -> str:
    path = match.group(0)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return f".../{name}"


def public(value: Any) -> Any:
    """A JSON view with paths redacted and the HIDDEN_KEYS dropped, at any depth."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if k not in HIDDEN_KEYS}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value
