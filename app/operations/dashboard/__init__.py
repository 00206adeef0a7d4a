"""The dashboard: static HTML, JS and CSS shipped in the package, fed by /models and /events."""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

router = APIRouter(include_in_schema=False)
TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


@functools.cache
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _file(name: str) -> Response:
    return Response(_read(name), media_type=TYPES[name], headers={"Cache-Control": "no-cache"})


@router.get("/")
async def root() -> RedirectResponse:
    """The dashboard lives at /dashboard."""
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard")
async def dashboard() -> Response:
    """The live dashboard page."""
    return _file("index.html")


@router.get("/dashboard/dashboard.js")
async def script() -> Response:
    """The dashboard's script."""
    return _file("dashboard.js")


@router.get("/dashboard/dashboard.css")
async def style() -> Response:
    """The dashboard's style sheet."""
    return _file("dashboard.css")
