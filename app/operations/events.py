"""GET /events: the model event stream as server-sent events, resumable by Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.errors import HTTPError
from app.http.routes import Manager
from registry.events import Subscription

router = APIRouter()
KEEPALIVE = 15.0  # seconds between comment lines, so proxies keep an idle stream open


@router.get("/events")
async def events(request: Request, manager: Manager, after: int | None = None) -> StreamingResponse:
    """Model events as `text/event-stream`; `?after=ID` or Last-Event-ID replays what was missed.

    Ids start at 1 (0: before the first event), so a negative one is refused with a 400 rather
    than taken as a point before the history began (which would report events as missed).
    """
    resume = request.headers.get("last-event-id")
    source = "?after"
    if resume is not None:
        source = "Last-Event-ID"
        try:
            after = int(resume)
        except ValueError:
            after = -1
    if after is not None and after < 0:
        raise HTTPError(
            400,
            "bad_request",
            f"{source} must be the id of an event, an integer from 0 (0 replays every event "
            f"kept); got {resume if resume is not None else after!r}",
        )
    subscription = manager.events.subscribe(after=after)
    return StreamingResponse(
        _stream(subscription),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(subscription: Subscription) -> AsyncIterator[str]:
    try:
        yield "retry: 1000\n\n"
        while True:
            event = await subscription.next(within=KEEPALIVE)
            if event is None:
                if subscription.closed:
                    return  # shutdown: end the response so the server can drain
                yield ": keepalive\n\n"
                continue
            data = json.dumps(event.as_dict(), separators=(",", ":"))
            yield f"id: {event.id}\nevent: {event.kind.value}\ndata: {data}\n\n"
    finally:
        subscription.close()
