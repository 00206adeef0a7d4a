"""Admin routes (load, unload, reload): they need the admin token; inference does not."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request

from app.errors import HTTPError
from app.http.routes import Manager
from app.views_json import model_json
from registry.admin_token import admin_token

router = APIRouter()


def require_admin(request: Request, manager: Manager) -> None:
    """403 when no token is configured; 401 when the request's token is missing or wrong."""
    settings = manager.config.server
    token = admin_token(settings)
    if token is None:
        raise HTTPError(
            403,
            "admin_disabled",
            f"admin endpoints are disabled: start the server with the "
            f"{settings.admin_token_env} environment variable set to a secret (or set "
            "server.admin_token in models.yaml), then send 'Authorization: Bearer <token>'",
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise HTTPError(
            401,
            "unauthorized",
            "missing or wrong admin token; send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


admin = [Depends(require_admin)]


@router.post("/models/{name}/load", dependencies=admin)
async def load(name: str, manager: Manager) -> dict[str, Any]:
    """Load a model now; a failed one is retried at once."""
    return model_json(await manager.load(name))


@router.post("/models/{name}/unload", dependencies=admin)
async def unload(name: str, manager: Manager) -> dict[str, Any]:
    """Unload a model after its in-flight requests finish."""
    return model_json(await manager.unload(name))


@router.post("/admin/reload", dependencies=admin)
async def reload(manager: Manager) -> dict[str, Any]:
    """Re-read models.yaml and apply the difference; 422 and no change when it is invalid."""
    changes = await manager.reload()
    return {"applied": True, **changes.as_dict()}
