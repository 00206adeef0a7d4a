"""`deploy/ray-serve.yaml` is a valid Serve config that builds our application."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support import ROOT

serve_schema = pytest.importorskip("ray.serve.schema", reason="needs the [ray] extra")


def test_the_serve_deploy_file_builds_the_registry_application(tmp_path: Path) -> None:
    """`serve deploy deploy/ray-serve.yaml`: Ray accepts the file, and its import_path and
    args build the gateway in front of N registry replicas routed by our router."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from app.ray import gateway as ray_app

    document = yaml.safe_load((ROOT / "deploy/ray-serve.yaml").read_text())
    app_schema = serve_schema.ServeDeploySchema.model_validate(document).applications[0]
    assert app_schema.import_path == "app.ray.gateway:build_app"
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  m: {loader: fake}\n")
    args = {**app_schema.args, "config": str(config)}
    app = call_user_app_builder_with_args_if_necessary(ray_app.build_app, args)
    gateway = app._bound_deployment
    registry = gateway.init_args[0]._bound_deployment  # the handle's deployment
    assert gateway.name == "Gateway"
    assert registry.name == "RegistryReplica"
    assert registry.num_replicas == args["replicas"]
    router = registry._deployment_config.request_router_config
    assert router.request_router_class == "app.ray.router:ModelAwareRouter"


def test_the_plain_server_never_imports_ray() -> None:
    """The [ray] extra is optional: the core, the app and the CLI load without Ray."""
    import subprocess
    import sys

    code = (
        "import sys, app.main, app.cli, app.http.server, registry.manager; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
