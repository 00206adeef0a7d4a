"""The admin token: from the environment variable the settings name, else from the settings."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.config.schema import ServerSettings


def admin_token(settings: ServerSettings) -> str | None:
    """The admin token: the environment variable first, then server.admin_token."""
    from_env = os.environ.get(settings.admin_token_env, "").strip()
    if from_env:
        return from_env
    if settings.admin_token is not None and settings.admin_token.get_secret_value().strip():
        return settings.admin_token.get_secret_value().strip()
    return None
