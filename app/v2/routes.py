"""Open Inference Protocol (KServe V2) over HTTP/REST, beside the native API.

A thin adapter: an infer request becomes the same `manager.predict` call as the native
predict route (so cold loads, single flight, leases and the budget behave identically), and
its predictions become named tensors (app/v2/models.py; the bodies: app/v2/infer_body.py).
Extensions: binary tensor data, and the model repository (load/unload need the admin token,
as in the native admin API). Errors are `{"error": "..."}` with the native API's statuses,
except a malformed request's 400 (app/v2/errors.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from app.errors import Failure, HTTPError
from app.http.admin import require_admin
from app.http.routes import Manager
from app.v2.errors import Route, TensorError, render
from app.v2.infer_body import HEADER_LENGTH, encode_response, parse_request
from app.v2.json_tensors import parse_json
from app.v2.models import model_inputs, model_outputs, platform, signature
from app.views_json import model_json, readiness_json
from registry.payload import ImageRequest, TextRequest
from registry.slot import State

EXTENSIONS = ["binary_tensor_data", "model_repository"]
VERSION = "1"  # every model has one version
REPOSITORY_STATE = {
    State.LOADED: "READY",
    State.LOADING: "LOADING",
    State.UNLOADING: "UNLOADING",
    State.UNLOADED: "UNAVAILABLE",
    State.FAILED: "UNAVAILABLE",
    State.OFFLOADING: "UNLOADING",
    State.OFFLOADED: "UNAVAILABLE",  # kept in host memory: a request loads it (by a copy)
}


router = APIRouter(prefix="/v2", route_class=Route, tags=["Open Inference Protocol"])


def _check_version(manager: Manager, name: str, version: str | None) -> None:
    manager.spec(name)  # 404 for an unknown model first
    if version is not None and version != VERSION:
        raise HTTPError(
            404, "unknown_version", f"model {name!r} has one version, {VERSION!r}, not {version!r}"
        )


@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    return {
        "name": "model-registry-server",
        "version": request.app.version,
        "extensions": EXTENSIONS,
    }


@router.get("/health/live")
async def live() -> Response:
    """200 as soon as the process serves."""
    return Response(status_code=200)


@router.get("/health/ready")
async def ready(manager: Manager) -> Response:
    """200 once every hot model is loaded, else 503 (as GET /health/ready)."""
    readiness = manager.readiness()
    if readiness.ready:
        return Response(status_code=200)
    detail = json.dumps(readiness_json(readiness))
    return JSONResponse({"error": f"not ready: {detail}"}, status_code=503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(name: str, manager: Manager, version: str | None = None) -> dict[str, Any]:
    """A model's inputs and outputs, by its task."""
    _check_version(manager, name, version)
    spec = manager.spec(name)
    inputs, outputs = signature(spec)
    return {
        "name": name,
        "versions": [VERSION],
        "platform": platform(spec),
        "inputs": inputs,
        "outputs": outputs,
    }


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(name: str, manager: Manager, version: str | None = None) -> Response:
    """200 while the model is loaded; 400 otherwise (an infer request loads it anyway)."""
    _check_version(manager, name, version)
    state = manager.describe(name).state
    if state is State.LOADED:
        return Response(status_code=200)
    return render(
        Failure(
            400,
            "not_ready",
            f"model {name!r} is {state.value}; an infer request loads it on demand "
            f"(or POST /v2/repository/models/{name}/load)",
        )
    )


@router.post("/models/{name}/infer")
async def infer(name: str, request: Request, manager: Manager) -> Response:
    """Run the model on the request's tensors (JSON or binary), as the native predict does."""
    return await _infer(name, request, manager)


@router.post("/models/{name}/versions/{version}/infer")
async def infer_version(name: str, version: str, request: Request, manager: Manager) -> Response:
    """As /v2/models/{name}/infer; the version must be 1."""
    _check_version(manager, name, version)
    return await _infer(name, request, manager)


async def _infer(name: str, request: Request, manager: Manager) -> Response:
    spec = manager.spec(name)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise TensorError("compressed requests are not supported; send the body uncompressed")
    parsed = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
    if parsed.outputs is not None:  # refuse an unknown output before running the model
        declared = [output["name"] for output in signature(spec)[1]]
        unknown = [n for n in parsed.outputs if n not in declared]
        if unknown:
            raise TensorError(f"model {name!r} has no output(s) {unknown}; it has {declared}")
    items = model_inputs(name, spec, parsed.inputs)
    if not items:
        raise TensorError(f"the input tensor of model {name!r} is empty; send at least one element")
    if spec.input_kind == "image":
        predictions = await _predict_images(manager, name, items, parsed.parameters)
    else:
        request_body = TextRequest(inputs=items, parameters=parsed.parameters)
        predictions = await manager.predict(name, request_body)
    body, header_length = encode_response(name, parsed, model_outputs(spec, predictions))
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(header_length)},
    )


async def _predict_images(
    manager: Manager, name: str, images: list[Any], parameters: dict[str, Any]
) -> list[Any]:
    """One native image request per image; the model's batcher groups them again."""
    limit = manager.config.server.max_inputs
    if len(images) > limit:  # the native check counts a request's inputs; here each is a request
        raise TensorError(
            f"the 'image' tensor has {len(images)} images; at most {limit} per request"
        )
    requests = [ImageRequest(data=data, parameters=parameters) for data in images]
    if len(requests) == 1:
        return [await manager.predict(name, requests[0])]
    return list(await asyncio.gather(*(manager.predict(name, r) for r in requests)))


# ------------------------------------------------------------------- repository extension

admin = [Depends(require_admin)]


@router.post("/repository/index")
async def repository_index(request: Request, manager: Manager) -> list[dict[str, Any]]:
    """Every model with its state; {"ready": true} lists only loaded ones."""
    options = await _json_object(request)
    only_ready = bool(options.get("ready", False))
    entries = []
    for entry in manager.snapshot().models:
        state = REPOSITORY_STATE[entry.state]
        if only_ready and state != "READY":
            continue
        reason = entry.error or ("" if state != "UNAVAILABLE" else "not loaded (loads on demand)")
        entries.append({"name": entry.name, "version": VERSION, "state": state, "reason": reason})
    return entries


@router.post("/repository/models/{name}/load", dependencies=admin)
async def repository_load(name: str, request: Request, manager: Manager) -> dict[str, Any]:
    """Load a model now (the admin token is required)."""
    manager.spec(name)
    parameters = (await _json_object(request)).get("parameters") or {}
    if parameters:
        raise TensorError(
            f"load parameters {sorted(parameters)} are not supported: models are defined in "
            "models.yaml (edit it and reload); send an empty body"
        )
    return model_json(await manager.load(name))


@router.post("/repository/models/{name}/unload", dependencies=admin)
async def repository_unload(name: str, request: Request, manager: Manager) -> dict[str, Any]:
    """Unload a model once its in-flight requests finish (the admin token is required)."""
    manager.spec(name)
    await _json_object(request)  # unload_dependents: no model depends on another here
    return model_json(await manager.unload(name))


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    value = parse_json(raw, "the body")
    if not isinstance(value, dict):
        raise TensorError("the body must be a JSON object (or empty)")
    return value


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
async def not_served(path: str, request: Request) -> Response:
    """Anything else under /v2 (statistics, trace, shared memory): 404, in the protocol shape."""
    return render(
        Failure(
            404,
            "not_found",
            f"{request.method} /v2/{path} is not served: this server implements the Open "
            "Inference Protocol's health, metadata, infer and model repository endpoints "
            "(extensions: binary_tensor_data, model_repository)",
        )
    )
