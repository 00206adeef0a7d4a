"""The `model-registry` command: `serve` and `validate` here, the client commands against a
running server in app/cli/client.py."""

from app.cli.commands import main

__all__ = ["main"]
