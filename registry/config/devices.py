"""The device checks of a config: the devices it will see, their budgets, and the models
that cannot fit on any device they may run on.

GPUs are looked for only when some model may run on one (so a CPU-only config never
imports torch or NVML); `server.simulated_devices` replaces the real ones.
"""

from __future__ import annotations

from collections.abc import Mapping

from registry.config.schema import Config, ModelSpec, ServerSettings
from registry.loaders import estimate_bytes
from registry.memory.device_budgets import gpu_share, resolve_limits
from registry.memory.devices import CPU, Device, discover, is_gpu
from registry.sources import Source
from registry.units import format_bytes


def config_devices(config: Config) -> list[Device]:
    """The devices this config's server will see (the host first)."""
    wants_gpu = any(spec.device_spec.wants_gpu for spec in config.models.values())
    return discover(config.server.simulated_devices, gpus=wants_gpu)


def device_limits(settings: ServerSettings, devices: list[Device]) -> dict[str, int]:
    """Each device's budget in bytes under these settings."""
    return resolve_limits(settings.memory_budget, settings.device_budgets, devices)


def device_estimate(spec: ModelSpec, source: Source | None) -> int | None:
    """Bytes the model will hold on a GPU: the fake's `device_bytes`, else its weights
    (its loader's estimate); None where unknown. ValueError for options that cannot work."""
    if spec.loader == "fake":
        from registry.loaders import fake

        return fake.estimate_device_bytes(spec, source)
    return estimate_bytes(spec, source)


def device_problems(config: Config, sources: Mapping[str, Source | None]) -> list[str]:
    """A problem for each model whose GPU charge fits no GPU it may run on.

    Only models that run on GPUs alone are checked, against the GPUs present (a model whose
    devices are all absent fails when it loads, as it always has); a model that may also
    run on the host (`auto`, a list with `cpu`) is `registry/config/checks.py`'s host check.
    GPUs are looked for only when such a model exists. `sources` are the models' resolved
    sources (those that could not be resolved are left out)."""
    problems = []
    gpu_models: dict[str, ModelSpec] = {}
    for name, spec in config.models.items():
        if name not in sources:
            continue
        if spec.device_spec.wants_gpu:
            if not _may_use_host(spec):
                gpu_models[name] = spec
        elif spec.loader == "fake" and spec.options.get("device_bytes"):
            problems.append(
                f"model {name!r}, field 'options': device_bytes claims memory on a GPU, but "
                f"the model's device is {spec.device!r}; set device: cuda:N"
            )
    if not gpu_models:
        return problems
    devices = config_devices(config)
    limits = device_limits(config.server, devices)
    by_name = {device.name: device for device in devices}
    for name, spec in gpu_models.items():
        gpus = [d for d in spec.device_spec.candidates(list(by_name)) if is_gpu(d)]
        if not gpus:
            continue  # no GPU here to check against: its load will say so
        try:
            estimate = device_estimate(spec, sources[name])
        except ValueError as exc:
            problems.append(f"model {name!r}, field 'options': {exc}")
            continue
        if estimate is None or any(estimate <= limits[gpu] for gpu in gpus):
            continue
        budgets = "; ".join(_describe(gpu, config.server, by_name[gpu]) for gpu in gpus)
        where = gpus[0] if len(gpus) == 1 else f"any of {', '.join(gpus)}"
        problems.append(
            f"model {name!r}: needs about {format_bytes(estimate)} on {where}, more than "
            f"its budget there ({budgets}); raise server.memory_budget's "
            f"{_key_hint(gpus)} entry or use a smaller model"
        )
    return problems


def _may_use_host(spec: ModelSpec) -> bool:
    """`auto`, or a list with `cpu`: the host's check covers the model."""
    return any(choice in (CPU, "auto") for choice in spec.device_spec.choices)


def _describe(gpu: str, settings: ServerSettings, device: Device) -> str:
    """`cuda:1: 1.0 GB, memory_budget.cuda:1 = 50% of 2.0 GB` (or `the default 90% of ...`)."""
    share, key = gpu_share(gpu, settings.device_budgets)
    limit = format_bytes(share.resolve(device.total))
    if share.percent is None:
        return f"{gpu}: {limit}, memory_budget.{key}"
    of = f"{share.percent:g}% of {format_bytes(device.total)}"
    origin = f"the default {of}" if key == "default" else f"memory_budget.{key} = {of}"
    return f"{gpu}: {limit}, {origin}"


def _key_hint(gpus: list[str]) -> str:
    return gpus[0] if len(gpus) == 1 else "cuda"
