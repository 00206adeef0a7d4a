"""The Ray Serve application: a gateway in front of N registry replicas.

    HTTP proxy -> Gateway -> (ModelAwareRouter) -> RegistryReplica x N

The gateway takes every HTTP request from Ray's proxy. A request about one model
(`/models/{name}/predict`, `/models/{name}/load`, ...) is forwarded with the model name as
Ray's multiplexed model id, which the router (app/ray/router.py) uses to pick a replica that
holds the model, else the one with the most free budget. Views of the whole deployment
(`GET /models`, `GET /models/{name}`, `/health/ready`) ask every replica for its report
(the one it gives the routers) and merge them. `build_app({"config": ..., "replicas": N})`
builds it: the `import_path` of deploy/ray-serve.yaml, and what `serve --ray` runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.errors import error_body
from app.ray.aggregate import merge_ready, merge_snapshots
from app.ray.replica import Answer, Forwarded, RegistryReplica
from app.views_json import model_json
from app.visibility import bearer_matches, public
from registry.admin_token import admin_token
from registry.config.file import load_config
from registry.config.schema import Config
from registry.errors import UnknownModel
from registry.slot import Slot
from registry.sources import Source
from registry.views import model_view

log = logging.getLogger("app")
REGISTRY = "RegistryReplica"
SERVE_NAMESPACE = "serve"
FAN_OUT_TIMEOUT = 5.0  # a replica that does not answer a view in this long is "unreachable"
STATS_PERIOD = 0.5  # seconds between the replicas' reports to the routers
_MODEL_PATH = re.compile(r"^/models/([^/]+)/(predict|load|unload)$")


def error(
    status: int, kind: str, message: str, retry_after: int | None = None, **extra: Any
) -> JSONResponse:
    """The plain server's error shape (app/errors.py)."""
    headers = None
    if retry_after is not None:
        extra["retry_after"] = retry_after
        headers = {"Retry-After": str(retry_after)}
    return JSONResponse(error_body(kind, message, **extra), status_code=status, headers=headers)


class Gateway:
    """Ray Serve ingress: routes by model, fans views out to every replica."""

    def __init__(self, registry: DeploymentHandle[Any], config_path: str) -> None:
        self._registry = registry
        config = load_config(config_path)
        # A bound on every forwarded call, so that nothing hangs on a lost replica.
        self._timeout = config.server.request_timeout + 60.0
        self._token = admin_token(config.server)
        self._app = serve.get_replica_context().app_name
        self._blank = {
            name: model_json(model_view(Slot(name=name, spec=spec, source=_source(config, name))))
            for name, spec in config.models.items()
        }

    async def __call__(self, request: Request) -> Response:
        """Answer one HTTP request from Ray's proxy."""
        path, method = request.url.path, request.method
        if method == "GET" and path == "/health/live":
            return JSONResponse({"status": "live"})
        forwarded = Forwarded(
            method=method,
            path=path,
            query=request.url.query.encode(),
            headers=[(k.lower(), v) for k, v in request.headers.raw],
            body=await request.body(),
        )
        if method == "GET" and (
            path in ("/models", "/health/ready")
            or (path.startswith("/models/") and path.count("/") == 2)
        ):
            admin = self._token is not None and bearer_matches(request, self._token)
            return await self._view(path, admin=admin)
        if path == "/admin/reload":
            return error(
                409,
                "not_supported",
                "on Ray Serve, apply an edited models.yaml by redeploying the application "
                "(serve deploy, or restart model-registry serve --ray); with server.watch "
                "each replica also reloads the file itself",
            )
        match = _MODEL_PATH.match(path)
        model = match.group(1) if match else ""
        if model and model not in self._blank:  # answered here: routing it would cost a slot
            return _unknown(model, self._blank)
        return await self._forward(forwarded, model)

    async def _forward(self, request: Forwarded, model: str) -> Response:
        """Send to the replica the router picks; a replica lost mid-request is retried once."""
        handle = self._registry.options(multiplexed_model_id=model)
        for attempt in (1, 2):
            try:
                answer: Answer = await asyncio.wait_for(
                    handle.handle.remote(request), timeout=self._timeout
                )
            except (RayActorError, ActorUnavailableError) as exc:
                log.warning("replica lost during %s %s: %s", request.method, request.path, exc)
                if attempt == 1:
                    continue  # inference is side-effect free: safe to run again elsewhere
                return error(
                    503,
                    "replica_lost",
                    f"the replica serving {request.path} went away twice; retry shortly",
                    retry_after=1,
                )
            except TimeoutError:
                return error(
                    504,
                    "replica_timeout",
                    f"no replica answered {request.path} within {self._timeout:g}s",
                )
            return Response(answer.body, answer.status, headers=_headers(answer))
        raise AssertionError("unreachable")

    async def _reports(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Every live replica's report, fresh (asked directly, not the routers' copies)."""
        import ray

        names = _replica_actor_names(self._app)

        async def one(name: str) -> dict[str, Any] | None:
            try:
                actor = ray.get_actor(name, namespace=SERVE_NAMESPACE)
                report: dict[str, Any] = await asyncio.wait_for(
                    actor.record_routing_stats.remote(), timeout=FAN_OUT_TIMEOUT
                )
            except (RayActorError, ActorUnavailableError, TimeoutError, ValueError):
                return None
            return report if report else None  # {} while the replica is still starting

        got = await asyncio.gather(*(one(n) for n in names))
        reports = {r["replica"]: r for r in got if r is not None}
        missing = [n.rsplit("#", 1)[-1] for n, r in zip(names, got, strict=True) if r is None]
        return reports, missing

    async def _view(self, path: str, *, admin: bool) -> Response:
        """GET /models, GET /models/{name} or /health/ready, merged over the replicas.

        As on the plain server, only a caller with the admin token sees paths and sources.
        """
        reports, unreachable = await self._reports()
        shown: Callable[[Any], Any] = _as_is if admin else public
        if path == "/health/ready":
            body = merge_ready(reports, unreachable)
            return JSONResponse(shown(body), status_code=200 if body["status"] == "ready" else 503)
        if not reports:
            return error(503, "no_replicas", "no registry replica is reachable yet", 1)
        merged = merge_snapshots(reports, self._blank, unreachable)
        if path == "/models":
            return JSONResponse(shown(merged))
        name = path.removeprefix("/models/")
        for entry in merged["models"]:
            if entry["name"] == name:
                return JSONResponse(shown(entry))
        return _unknown(name, self._blank)


def _as_is(body: Any) -> Any:
    return body


def _headers(answer: Answer) -> dict[str, str]:
    skip = {"content-length"}  # Starlette sets it again
    return {k.decode(): v.decode() for k, v in answer.headers if k.decode().lower() not in skip}


def _replica_actor_names(app_name: str) -> list[str]:
    """Actor names of the registry replicas alive now (Ray's naming: prefix + replica id)."""
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#{REGISTRY}#"
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(n["name"] for n in names if n["name"].startswith(prefix))


def _source(config: Config, name: str) -> Source | None:
    try:
        return config.source_of(name)
    except ValueError:
        return None


def _unknown(name: str, known: dict[str, Any]) -> JSONResponse:
    exc = UnknownModel(name, known)
    return error(404, exc.kind, exc.message, known=exc.known)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application: `args` has `config` (models.yaml) and `replicas` (default 2)."""
    path = Path(str(args.get("config", "models.yaml")))
    config = load_config(path)  # fail here, not in N replicas, on an invalid file
    config_arg = str(path.resolve()) if path.exists() else str(path)
    router: dict[str, Any] = {
        "request_router_class": "app.ray.router:ModelAwareRouter",
        "request_routing_stats_period_s": STATS_PERIOD,
        "request_routing_stats_timeout_s": 5.0,
    }
    registry = serve.deployment(
        name=REGISTRY,
        num_replicas=int(args.get("replicas", 2)),
        # Our registry queues and sheds (max_queue, 503) itself; Ray must not spill a model's
        # requests onto a second replica just because the first has a few in flight.
        max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": float(args.get("replica_cpus", 0))},
        request_router_config=router,
        health_check_period_s=2.0,
        health_check_timeout_s=10.0,
        graceful_shutdown_timeout_s=max(1.0, config.server.drain_timeout),
    )(RegistryReplica)
    gateway = serve.deployment(
        name="Gateway", num_replicas=1, max_ongoing_requests=2000, ray_actor_options={"num_cpus": 0}
    )(Gateway)
    application: serve.Application = gateway.bind(registry.bind(config_arg), config_arg)
    return application
