"""Open Inference Protocol errors: `{"error": "..."}`, with the protocol's statuses.

The native API's statuses (app/errors.py), except a malformed request, which the protocol
answers with 400 (a native BadInput is 422).
"""

from __future__ import annotations

from types import MappingProxyType

from fastapi import Response
from fastapi.responses import JSONResponse

from app import errors
from app.errors import Failure, StatusTable
from registry.errors import BadInput


class TensorError(BadInput):
    """The request's tensors are malformed (HTTP 400)."""

    kind = "bad_tensor"


STATUS: StatusTable = MappingProxyType({**errors.STATUS, TensorError.kind: 400})


def render(failure: Failure) -> Response:
    """The protocol's error body: {"error": "..."}."""
    return JSONResponse(
        {"error": failure.message}, status_code=failure.status, headers=failure.headers
    )


Route = errors.shaped_route(render, STATUS)
"""The route class of every /v2 route: its errors (dependencies' too) in the protocol's shape."""
