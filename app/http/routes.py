"""HTTP routes: parse the input, call the manager, shape the output."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import to_json
from starlette.datastructures import UploadFile

from app import json_body
from app.errors import ClientGone
from app.views_json import model_json, readiness_json, registry_json
from app.visibility import is_admin, public
from registry.admission import check_input_kind
from registry.errors import BadInput
from registry.manager import ModelManager
from registry.payload import ImageRequest, TextRequest, check_numbers, may_hold_odd_numbers

log = logging.getLogger("app")
T = TypeVar("T")
TEXT_SHAPE = '{"inputs": "text" | ["text", ...], "parameters": {...}}'


async def get_manager(request: Request) -> ModelManager:
    """The manager the lifespan created (async: a sync dependency costs a thread hop)."""
    manager: ModelManager = request.app.state.manager
    return manager


Manager = Annotated[ModelManager, Depends(get_manager)]
router = APIRouter()


class PredictBody(BaseModel):
    """JSON body of a text (or JSON) prediction."""

    model_config = ConfigDict(extra="forbid")

    inputs: Any
    parameters: dict[str, Any] = {}


@router.get("/health/live")
async def live() -> dict[str, str]:
    """200 as soon as the process serves."""
    return {"status": "live"}


@router.get("/health/ready")
async def ready(request: Request, manager: Manager) -> JSONResponse:
    """200 once every hot model is loaded; 503 listing what is pending until then."""
    readiness = manager.readiness()
    body = _view(request, readiness_json(readiness))
    return JSONResponse(body, status_code=200 if readiness.ready else 503)


@router.get("/models")
async def list_models(request: Request, manager: Manager) -> dict[str, Any]:
    """Every model's load state, and the memory budget (paths only with the admin token)."""
    view: dict[str, Any] = _view(request, registry_json(manager.snapshot()))
    return view


@router.get("/models/{name}")
async def get_model(name: str, request: Request, manager: Manager) -> dict[str, Any]:
    """One model's load state (paths only with the admin token)."""
    view: dict[str, Any] = _view(request, model_json(manager.describe(name)))
    return view


def _view(request: Request, detail: dict[str, Any]) -> Any:
    return detail if is_admin(request) else public(detail)


@router.post("/models/{name}/predict", response_class=JSONResponse)
async def predict(name: str, request: Request) -> Response:
    """Predict with `name`: an image in multipart field `file`, or JSON inputs."""
    # The hot path: no dependency to solve (the manager is read here) and no response model
    # to validate: the answer is encoded once, by pydantic-core's encoder, as FastAPI would.
    manager: ModelManager = request.app.state.manager
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload = content_type == "multipart/form-data"
    sent = content_type or "no content type"
    check_input_kind(name, manager.spec(name), upload=upload, sent=sent)  # before the body
    payload: ImageRequest | TextRequest
    payload = await _read_upload(request) if upload else await _read_json(request)
    predictions = await unless_disconnected(request, manager.predict(name, payload))
    body = to_json({"model": name, "predictions": predictions})
    return Response(body, media_type="application/json")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first.

    A request waiting for a load (or for its model's turn) whose client has gone must not
    keep counting as queued nor run later: cancelling it drops it from the manager's queues.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:  # the body has been read: the next message is the disconnect
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            log.info("%s %s: the client went away; dropped", request.method, request.url.path)
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


async def _read_upload(request: Request) -> ImageRequest:
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            fields = ", ".join(sorted(form.keys())) or "none"
            raise BadInput(
                f"expected the image in multipart field 'file' (fields sent: {fields}); "
                "e.g. curl -F file=@digit.png"
            )
        data = await upload.read()
        parameters = _form_parameters(form.get("parameters"))
        return ImageRequest(data=data, filename=upload.filename, parameters=parameters)


def _form_parameters(raw: object) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json_body.parse(str(raw), "form field 'parameters'")
    except json_body.MalformedJSON:
        value = None
    if not isinstance(value, dict):
        raise BadInput("form field 'parameters' must be a JSON object, e.g. {\"top_k\": 3}")
    check_numbers(value, "parameters")
    return value


async def _read_json(request: Request) -> TextRequest:
    raw = await request.body()
    if not raw.strip():
        raise BadInput(f"the request body is empty; send JSON {TEXT_SHAPE}")
    try:
        body = PredictBody.model_validate(json_body.parse(raw))
    except json_body.MalformedJSON as exc:
        raise BadInput(f"expected JSON {TEXT_SHAPE}: {exc.message}") from None
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise BadInput(f"expected JSON {TEXT_SHAPE}: {problems}") from None
    if may_hold_odd_numbers(raw):  # a cheap scan, so that plain bodies are not walked
        check_numbers(body.inputs, "inputs")
        check_numbers(body.parameters, "parameters")
    return TextRequest(inputs=body.inputs, parameters=body.parameters)


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "model_type":
        return "the body must be a JSON object"
    if error["type"] == "dict_type":
        return f"{where}: Input should be an object"
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    return f"{where}: {error['msg']}" if where else str(error["msg"])
