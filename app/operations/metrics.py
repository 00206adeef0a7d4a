"""GET /metrics: the Prometheus exposition (prometheus_text.py), read at scrape time."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.http.routes import Manager

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(manager: Manager) -> Response:
    """Prometheus exposition: the registry's figures and the standard process collectors."""
    from app.operations.prometheus_text import exposition  # prometheus_client: at the first scrape

    body, content_type = await exposition(manager)
    return Response(body, media_type=content_type)
