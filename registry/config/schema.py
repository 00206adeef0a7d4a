"""models.yaml's schema: strict, frozen pydantic models, and the `Config` value they make.

`registry/config/file.py` reads a file into a `Config`; see its docstring for the steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    model_validator,
)

from registry.memory.device_budgets import Share, gpu_entries, host_budget, parse_share
from registry.memory.devices import DeviceSpec, check_simulated, device_value, parse_device_spec
from registry.sources import Source, resolve_source
from registry.units import parse_duration, parse_size

ByteSize = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
BudgetShare = Annotated[
    Share,
    PlainValidator(lambda v: v if isinstance(v, Share) else parse_share(v)),
    PlainSerializer(lambda s: s.nbytes if s.percent is None else f"{s.percent:g}%"),
]

# Pipeline tasks whose input is one image (multipart upload); every other task takes text.
IMAGE_TASKS = frozenset(
    {
        "image-classification",
        "image-feature-extraction",
        "image-segmentation",
        "image-to-text",
        "object-detection",
        "depth-estimation",
        "zero-shot-image-classification",
        "zero-shot-object-detection",
        "image-to-image",
        "mask-generation",
        "keypoint-matching",
    }
)
GENERATION_TASK = "text-generation"  # causal LMs: streamed, OpenAI chat and completions
DEFAULT_MAX_TOKENS = 512  # a generation model's max_tokens ceiling unless its entry sets one
InputKind = Literal["image", "text", "json"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOADER_PATTERN = re.compile(r"^(fake|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
ADMIN_TOKEN_ENV = "MODEL_REGISTRY_ADMIN_TOKEN"
# Fields filled from another key (device_budgets from memory_budget's mapping form), never
# written by users, so not offered among the allowed keys.
DERIVED_KEYS = frozenset({"device_budgets"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchSpec(_Strict):
    """Dynamic batching: group concurrent requests into one call of up to `max_size` inputs."""

    max_size: int = Field(ge=1, le=1024)
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)


class BackoffSpec(_Strict):
    """Delay before retrying a failed load: `initial`, doubled per failure, capped at `max`."""

    initial: Duration = 1.0
    max: Duration = 60.0


HostBudget = Annotated[int, BeforeValidator(host_budget)]


class ServerSettings(_Strict):
    """The `server:` section; every field has a safe default."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # A size (the host's budget), or a mapping by device: {cpu: 2GiB, cuda: 80%, cuda:1: 10GiB};
    # the mapping's GPU entries land in device_budgets (registry/memory/device_budgets.py).
    memory_budget: HostBudget = Field(default_factory=lambda: parse_size("50%"), gt=0)
    device_budgets: dict[str, BudgetShare] = Field(default_factory=dict)
    # GPUs that exist only on paper, for tests on a CPU: {cuda:0: 8GiB, cuda:1: 4GiB}.
    simulated_devices: Annotated[dict[str, ByteSize], AfterValidator(check_simulated)] = Field(
        default_factory=dict
    )
    # The host-RAM tier: a model evicted from a GPU is kept in host memory while the host
    # budget has room, and comes back by a copy (docs/gpus.md). false: unloaded, as before.
    host_tier: bool = True
    preload: Literal["background", "wait"] = "background"
    max_upload_size: ByteSize = Field(default=10 * 1000**2, gt=0)
    max_header_size: ByteSize = Field(default=64 * 1024, ge=1024)  # request line + headers
    max_headers: int = Field(default=100, ge=1)
    max_inputs: int = Field(default=256, ge=1)
    request_timeout: Duration = Field(default=30.0, gt=0)
    capacity_wait: Duration = Field(default=10.0, ge=0)
    load_timeout: Duration = Field(default=300.0, gt=0)
    predict_timeout: Duration = Field(default=60.0, gt=0)
    drain_timeout: Duration = Field(default=30.0, ge=0)
    max_parallel_loads: int = Field(default=2, ge=1)
    eviction: Literal["lru", "cost"] = "cost"  # registry/memory/policy.py
    inference_workers: int | None = Field(default=None, ge=1)
    torch_threads: int | None = Field(default=None, ge=1)
    idle_ttl: Duration = 0.0
    max_queue: int = Field(default=128, ge=1)
    retry_backoff: BackoffSpec = BackoffSpec()
    admin_token_env: str = ADMIN_TOKEN_ENV
    admin_token: SecretStr | None = None  # prefer the environment variable: files leak
    watch: bool = True
    watch_interval: Duration = Field(default=0.5, gt=0)
    # Where models run unless their entry says: auto = a worker process for custom loaders
    # and models of PROCESS_FROM bytes or more, the server's own process for the rest.
    isolation: Literal["auto", "thread", "process"] = "auto"
    # A worker whose private memory grows past its reservation by this fraction is recycled.
    worker_memory_margin: float = Field(default=0.5, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _split_memory_budget(cls, data: Any) -> Any:
        """memory_budget as a mapping: its valid GPU entries become device_budgets (the
        field's own validator reports the invalid ones and keeps the host's)."""
        if not isinstance(data, dict):
            return data
        if "device_budgets" in data:
            raise ValueError(
                "device_budgets is set through memory_budget; write e.g. "
                "memory_budget: {cpu: 2GiB, cuda: 80%, cuda:1: 10GiB}"
            )
        budget = data.get("memory_budget")
        if isinstance(budget, dict):
            data = dict(data)
            data["device_budgets"] = gpu_entries(budget)
        return data


class ModelSpec(_Strict):
    """One entry under `models:`."""

    task: str | None = None
    source: str | None = None
    loader: str | None = None
    input: InputKind | None = None
    description: str = ""
    hot: bool = False
    pinned: bool = False
    size_hint: ByteSize | None = None
    idle_ttl: Duration | None = None
    load_timeout: Duration | None = Field(default=None, gt=0)
    predict_timeout: Duration | None = Field(default=None, gt=0)
    isolation: Literal["thread", "process"] | None = None
    max_queue: int | None = Field(default=None, ge=1)
    batch: BatchSpec | None = None
    # cpu, cuda (any GPU), cuda:N (pinned), mps, auto, or a list such as [cuda:0, cuda:1]
    device: Annotated[str | list[str], BeforeValidator(device_value)] = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    # text-generation: the most tokens one request may generate (a request asking for more
    # gets this many); None: DEFAULT_MAX_TOKENS.
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.task is None and self.loader is None:
            raise ValueError(
                "set 'task' (a transformers pipeline task such as text-classification) "
                "or 'loader' ('package.module:function', or 'fake')"
            )
        if self.loader is not None and not LOADER_PATTERN.match(self.loader):
            raise ValueError(
                f"loader {self.loader!r} must look like 'package.module:function' (or be 'fake')"
            )
        if self.loader is None and self.source is None:
            raise ValueError(
                "'source' is required for a transformers task: a local directory, "
                "pkg:<package>[/<dir>] or hf:<org>/<name>[@revision]"
            )
        if self.max_tokens is not None and self.task != GENERATION_TASK:
            raise ValueError("'max_tokens' applies to task: text-generation only")
        parse_device_spec(self.device)  # ValueError saying what a device may be
        return self

    @property
    def device_spec(self) -> DeviceSpec:
        """The devices this model may run on, parsed."""
        return parse_device_spec(self.device)

    @property
    def input_kind(self) -> InputKind:
        """What a request must send: an image upload, text, or any JSON."""
        if self.input is not None:
            return self.input
        if self.task in IMAGE_TASKS:
            return "image"
        return "text" if self.task is not None else "json"

    def identity(self) -> dict[str, Any]:
        """The fields that define the loaded artefact; a change means unload and load anew."""
        return self.model_dump(
            include={
                "task",
                "source",
                "loader",
                "input",
                "size_hint",
                "device",
                "dtype",
                "trust_remote_code",
                "allow_pickle",
                "isolation",
                "options",
                "max_tokens",
            }
        )


class Document(_Strict):
    """The whole file: `server:` and `models:`."""

    server: ServerSettings = ServerSettings()
    models: dict[str, ModelSpec] = Field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """A parsed, validated models.yaml."""

    path: Path
    server: ServerSettings
    models: dict[str, ModelSpec]
    digest: str

    @property
    def base_dir(self) -> Path:
        """Relative sources resolve against the config file's directory."""
        return self.path.parent

    def source_of(self, name: str) -> Source | None:
        """The resolved source of model `name` (None for loaders without one)."""
        return resolve_source(self.models[name].source, self.base_dir)
