"""models.yaml: a strict schema whose errors name the file, the model and the field."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError
from support import problems_of

from registry.config.file import load_config
from registry.config.schema import (
    DERIVED_KEYS,
    BackoffSpec,
    BatchSpec,
    Config,
    ModelSpec,
    ServerSettings,
)
from registry.errors import ConfigError
from registry.units import parse_size

WriteConfig = Callable[[str], Config]

MODEL_KEYS = ", ".join(sorted(ModelSpec.model_fields))
SERVER_KEYS = ", ".join(sorted(set(ServerSettings.model_fields) - DERIVED_KEYS))
BAD_NAME = (
    "a name may use letters, digits, '.', '_' and '-' (at most 64), "
    "and must start with a letter or digit"
)


def test_valid_file_round_trips(write_config: WriteConfig, tmp_path: Path) -> None:
    text = """\
server:
  port: 9001
  memory_budget: 2GiB
  idle_ttl: 10m
  retry_backoff:
    initial: 250ms
models:
  digits:
    task: image-classification
    source: ./digits
    hot: true
    description: handwritten digits
  echo:
    loader: fake
    pinned: true
    batch:
      max_size: 8
    options:
      size: 1MiB
      labels: [a, b]
"""
    (tmp_path / "digits").mkdir()  # a source must exist
    config = write_config(text)

    assert config.path == tmp_path / "models.yaml"
    assert config.base_dir == tmp_path
    assert config.digest == hashlib.sha256(text.encode()).hexdigest()
    assert config.server.port == 9001
    assert config.server.memory_budget == 2 * 1024**3
    assert config.server.idle_ttl == 600.0
    assert config.server.retry_backoff == BackoffSpec(initial=0.25, max=60.0)
    assert list(config.models) == ["digits", "echo"]
    digits, echo = config.models["digits"], config.models["echo"]
    assert (digits.task, digits.source, digits.hot, digits.pinned) == (
        "image-classification",
        "./digits",
        True,
        False,
    )
    assert digits.description == "handwritten digits"
    assert echo.loader == "fake"
    assert echo.pinned is True
    assert echo.batch == BatchSpec(max_size=8, max_wait_ms=5.0)
    assert echo.options == {"size": "1MiB", "labels": ["a", "b"]}


def test_defaults(write_config: WriteConfig) -> None:
    config = write_config("models:\n  a:\n    loader: fake\n")
    server = config.server
    assert server.host == "127.0.0.1"
    assert server.port == 8000
    assert server.preload == "background"
    assert server.max_upload_size == 10_000_000
    assert server.memory_budget == parse_size("50%")
    assert server.request_timeout == 30.0
    assert server.load_timeout == 300.0
    assert server.max_parallel_loads == 2
    assert server.idle_ttl == 0.0
    assert server.retry_backoff == BackoffSpec(initial=1.0, max=60.0)
    spec = config.models["a"]
    assert spec.device == "cpu"
    assert (spec.hot, spec.pinned, spec.size_hint, spec.batch, spec.options) == (
        False,
        False,
        None,
        None,
        {},
    )


def test_parsed_objects_are_frozen(write_config: WriteConfig) -> None:
    config = write_config("models:\n  a:\n    loader: fake\n")
    with pytest.raises(ValidationError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.models["a"].hot = True  # type: ignore[misc]


@pytest.mark.parametrize("text", ["", "\n", "# nothing here yet\n", "models: {}\n"])
def test_empty_file_has_no_models(write_config: WriteConfig, text: str) -> None:
    config = write_config(text)
    assert config.models == {}
    assert config.server.port == 8000


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        (
            "    hot: true\n",
            "model 'a': set 'task' (a transformers pipeline task such as text-classification) "
            "or 'loader' ('package.module:function', or 'fake')",
        ),
        (
            "    task: text-classification\n",
            "model 'a': 'source' is required for a transformers task: a local directory, "
            "pkg:<package>[/<dir>] or hf:<org>/<name>[@revision]",
        ),
        (
            "    loader: not-a-loader\n",
            "model 'a': loader 'not-a-loader' must look like 'package.module:function' "
            "(or be 'fake')",
        ),
        (
            "    loader: mypkg.module\n",
            "model 'a': loader 'mypkg.module' must look like 'package.module:function' "
            "(or be 'fake')",
        ),
        (
            "    loader: fake\n    device: gpu\n",
            "model 'a': device 'gpu' must be cpu, cuda, cuda:N, mps or auto",
        ),
        (
            "    loader: fake\n    batch:\n      max_size: 0\n",
            "model 'a', field 'batch.max_size': Input should be greater than or equal to 1",
        ),
        (
            "    loader: fake\n    dtype: float8\n",
            "model 'a', field 'dtype': Input should be 'auto', 'float32', 'float16' or 'bfloat16'",
        ),
        (
            "    loader: fake\n    input: audio\n",
            "model 'a', field 'input': Input should be 'image', 'text' or 'json'",
        ),
        (
            "    loader: fake\n    size_hint: 12XB\n",
            "model 'a', field 'size_hint': '12XB' is not a size; write e.g. 512MiB, 2GiB, "
            "10MB or 60%",
        ),
        (
            "    loader: fake\n    idle_ttl: soon\n",
            "model 'a', field 'idle_ttl': 'soon' is not a duration; write e.g. 500ms, 30s, "
            "10m or 1h",
        ),
    ],
)
def test_bad_model_is_named_with_its_field(tmp_path: Path, model: str, problem: str) -> None:
    assert problems_of(tmp_path, f"models:\n  a:\n{model}") == [problem]


@pytest.mark.parametrize(
    "loader", ["fake", "mypkg.loaders:build", "loaders:build", "_private.mod:_make"]
)
def test_good_loader_syntax(write_config: WriteConfig, loader: str) -> None:
    config = write_config(f"models:\n  a:\n    loader: {loader}\n    size_hint: 1kB\n")
    assert config.models["a"].loader == loader


@pytest.mark.parametrize("device", ["cpu", "auto", "mps", "cuda", "cuda:1"])
def test_good_devices(write_config: WriteConfig, device: str) -> None:
    config = write_config(f"models:\n  a:\n    loader: fake\n    device: {device}\n")
    assert config.models["a"].device == device


@pytest.mark.parametrize("name", ["bad name", "-x", ".hidden", "a/b", "x" * 65])
def test_bad_model_name(tmp_path: Path, name: str) -> None:
    text = f"models:\n  '{name}':\n    loader: fake\n"
    assert problems_of(tmp_path, text) == [f"model {name!r}: {BAD_NAME}"]


@pytest.mark.parametrize("name", ["a", "digits-resnet", "bert_v2.1", "X" * 64, "9lives"])
def test_good_model_name(write_config: WriteConfig, name: str) -> None:
    assert list(write_config(f"models:\n  '{name}':\n    loader: fake\n").models) == [name]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "modles: {}\n",
            "modles: unknown key; did you mean 'models'? allowed keys: models, server",
        ),
        (
            "server:\n  prot: 1\n",
            f"server.prot: unknown key; did you mean 'port'? allowed keys: {SERVER_KEYS}",
        ),
        (
            "server:\n  retry_backoff:\n    maximum: 5s\n",
            "server.retry_backoff.maximum: unknown key; did you mean 'max'? "
            "allowed keys: initial, max",
        ),
        (
            "models:\n  a:\n    loader: fake\n    sorce: ./x\n",
            f"model 'a', field 'sorce': unknown key; did you mean 'source'? "
            f"allowed keys: {MODEL_KEYS}",
        ),
        (
            "models:\n  a:\n    loader: fake\n    zzzz: 1\n",
            f"model 'a', field 'zzzz': unknown key; allowed keys: {MODEL_KEYS}",
        ),
    ],
)
def test_unknown_key_suggests_the_close_one(tmp_path: Path, text: str, problem: str) -> None:
    assert problems_of(tmp_path, text) == [problem]


def test_unknown_key_in_batch_names_the_nested_keys(tmp_path: Path) -> None:
    text = "models:\n  a:\n    loader: fake\n    batch:\n      max_sise: 2\n"
    problems = problems_of(tmp_path, text)
    assert (
        "model 'a', field 'batch.max_sise': unknown key; did you mean 'max_size'? "
        "allowed keys: max_size, max_wait_ms"
    ) in problems


def test_every_problem_is_listed(tmp_path: Path) -> None:
    text = "server:\n  port: -1\nmodels:\n  'bad name':\n    loader: fake\n  b:\n    hot: true\n"
    problems = problems_of(tmp_path, text)
    assert problems[0] == f"model 'bad name': {BAD_NAME}"
    assert sorted(problems[1:]) == [
        "model 'b': set 'task' (a transformers pipeline task such as text-classification) "
        "or 'loader' ('package.module:function', or 'fake')",
        "server.port: Input should be greater than or equal to 0",
    ]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("memory_budget: true", "expected a size such as 512MiB, 2GiB, 10MB or 60%"),
        ("memory_budget: 0", "Input should be greater than 0"),
        ("memory_budget: 0%", "'0%': a percentage of memory must be in (0, 100]"),
        ("port: 70000", "Input should be less than or equal to 65535"),
        ("preload: eager", "Input should be 'background' or 'wait'"),
        ("request_timeout: 0", "Input should be greater than 0"),
        (
            "request_timeout: 10 minutes",
            "'10 minutes' is not a duration; write e.g. 500ms, 30s, 10m or 1h",
        ),
    ],
)
def test_bad_server_setting(tmp_path: Path, setting: str, message: str) -> None:
    field = setting.split(":")[0]
    assert problems_of(tmp_path, f"server:\n  {setting}\n") == [f"server.{field}: {message}"]


def test_infinite_budget_is_a_config_error(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "server:\n  memory_budget: .inf\n") == [
        "server.memory_budget: expected a finite, non-negative size such as "
        "512MiB, 2GiB, 10MB or 60%"
    ]


def test_duplicate_model_key_names_its_line(tmp_path: Path) -> None:
    text = "models:\n  a:\n    loader: fake\n  b:\n    loader: fake\n  a:\n    loader: fake\n"
    assert problems_of(tmp_path, text) == ["YAML syntax, line 6, column 3: duplicate key 'a'"]


def test_duplicate_field_key_is_rejected(tmp_path: Path) -> None:
    text = "models:\n  a:\n    loader: fake\n    hot: true\n    hot: false\n"
    assert problems_of(tmp_path, text) == ["YAML syntax, line 5, column 5: duplicate key 'hot'"]


def test_unhashable_key_is_a_config_error(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "models:\n  ? [a, b]\n  : {loader: fake}\n")
    assert len(problems) == 1
    assert problems[0].startswith("YAML syntax, line 2, column 5: ")


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (
            "server:\n  port: [1\n",
            "line 3, column 1",
            "expected ',' or ']', but got '<stream end>'",
        ),
        (
            "models:\n  a:\n    loader: fake\n   hot: true\n",
            "line 4, column 4",
            "expected <block end>, but found '<block mapping start>'",
        ),
        ("models: [\n", "line 2, column 1", "expected the node content, but found '<stream end>'"),
    ],
)
def test_yaml_syntax_error_has_line_and_column(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    assert problems_of(tmp_path, text) == [f"YAML syntax, {where}: {what}"]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_file_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert problems_of(tmp_path, text) == [
        "the file must be a mapping with 'server:' and 'models:'"
    ]


def test_models_must_be_a_mapping(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "models: [a, b]\n") == [
        "models: Input should be a valid dictionary"
    ]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "models.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert info.value.problems == ["cannot read the file: No such file or directory"]
    assert str(info.value) == (
        f"invalid config {path}:\n  - cannot read the file: No such file or directory"
    )


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_bytes(b"models:\n  \xff\xfe: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["the file is not UTF-8 text"]


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("task: image-classification\n    source: ./x", "image"),
        ("task: object-detection\n    source: ./x", "image"),
        ("task: text-classification\n    source: ./x", "text"),
        ("task: feature-extraction\n    source: ./x", "text"),
        ("loader: fake", "json"),
        ("loader: fake\n    input: text", "text"),
        ("task: image-classification\n    source: ./x\n    input: json", "json"),
    ],
)
def test_input_kind(write_config: WriteConfig, tmp_path: Path, model: str, kind: str) -> None:
    (tmp_path / "x").mkdir()  # a source must exist
    config = write_config(f"models:\n  a:\n    {model}\n")
    assert config.models["a"].input_kind == kind


BASE = {"task": "text-classification", "source": "./x", "options": {"k": 1}}


@pytest.mark.parametrize(
    "change",
    [
        {"source": "./y"},
        {"options": {"k": 2}},
        {"task": "feature-extraction"},
        {"dtype": "float16"},
        {"device": "cuda"},
        {"size_hint": 1000},
        {"trust_remote_code": True},
    ],
)
def test_identity_changes_with_what_defines_the_artefact(change: dict[str, object]) -> None:
    assert ModelSpec(**{**BASE, **change}).identity() != ModelSpec(**BASE).identity()


@pytest.mark.parametrize(
    "change",
    [
        {"hot": True},
        {"pinned": True},
        {"idle_ttl": "5m"},
        {"description": "new words"},
        {"max_queue": 3},
    ],
)
def test_identity_ignores_serving_policy(change: dict[str, object]) -> None:
    assert ModelSpec(**{**BASE, **change}).identity() == ModelSpec(**BASE).identity()
