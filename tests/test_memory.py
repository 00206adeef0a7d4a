"""Model sizes: estimated from files before a load, measured from tensors after it."""

from __future__ import annotations

import json
import struct
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from registry.config.schema import ModelSpec
from registry.loaders import embeddings, estimate_bytes, fake, loader_for, pipeline
from registry.loaders import python as python_loader
from registry.memory.sizes import (
    measure_bytes,
    release_memory,
    rss_bytes,
    safetensors_bytes,
    weight_files_bytes,
)
from registry.sources import Source

# 100 float32 (400) + 50 float16 (100) + 7 int64 (56)
MIXED_BYTES = 556


def write_mixed(path: Path) -> Path:
    save_file(
        {
            "weight": torch.ones(10, 10, dtype=torch.float32),
            "half": torch.ones(50, dtype=torch.float16),
            "ids": torch.arange(7, dtype=torch.int64),
        },
        path,
        metadata={"format": "pt", "note": "x" * 100},
    )
    return path


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec(**{"task": "text-classification", "source": "./m", **fields})


def test_safetensors_bytes_sums_every_dtype(tmp_path: Path) -> None:
    assert safetensors_bytes(write_mixed(tmp_path / "m.safetensors")) == MIXED_BYTES


def test_safetensors_bytes_reads_only_the_header(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.zeros(256, 1024, dtype=torch.float32)}, path)
    (header_length,) = struct.unpack("<Q", path.read_bytes()[:8])
    with path.open("r+b") as f:
        f.truncate(8 + header_length)  # the data region is gone
    assert path.stat().st_size < 1024
    assert safetensors_bytes(path) == 256 * 1024 * 4


def safetensors_like(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"short",
        b"this is plain text, not tensors",
        safetensors_like(b"{not json"),
        struct.pack("<Q", 10**12) + b"{}",
    ],
    ids=["empty", "short", "text", "bad-json", "huge-header"],
)
def test_non_safetensors_file_raises_value_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        safetensors_bytes(path)


def test_a_torch_pickle_is_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    torch.save({"w": torch.zeros(4)}, path)
    with pytest.raises(ValueError):
        safetensors_bytes(path)


def test_json_header_that_is_not_an_object_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(safetensors_like(json.dumps([1, 2]).encode()))
    with pytest.raises(ValueError):
        safetensors_bytes(path)


def test_estimate_prefers_size_hint(tmp_path: Path) -> None:
    write_mixed(tmp_path / "model.safetensors")
    assert estimate_bytes(spec(size_hint="1MiB"), Source(path=tmp_path)) == 1024**2


def test_estimate_of_the_fake_loader_is_its_size_option() -> None:
    fake = ModelSpec(loader="fake", options={"size": "2MiB"})
    assert estimate_bytes(fake, None) == 2 * 1024**2


def test_size_hint_wins_over_the_fake_loaders_size_option() -> None:
    fake = ModelSpec(loader="fake", size_hint="3MiB", options={"size": "2MiB"})
    assert estimate_bytes(fake, None) == 3 * 1024**2


def test_a_bad_fake_size_option_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        estimate_bytes(ModelSpec(loader="fake", options={"size": "lots"}), None)


@pytest.mark.parametrize(
    ("fields", "loader"),
    [
        ({"loader": "fake"}, fake),
        ({"loader": "pkg.mod:make", "source": "./m"}, python_loader),
        ({"task": "sentence-embeddings", "source": "./m"}, embeddings),
        ({"task": "text-classification", "source": "./m"}, pipeline),
    ],
)
def test_each_entry_is_estimated_by_its_own_loader(fields: dict[str, Any], loader: Any) -> None:
    assert loader_for(ModelSpec(**fields)) is loader


@pytest.mark.parametrize(
    "fields",
    [
        {"loader": "pkg.mod:make", "source": "./m"},
        {"task": "sentence-embeddings", "source": "./m"},
        {"task": "text-classification", "source": "./m"},
    ],
)
def test_loaders_with_files_estimate_their_weight_files(
    tmp_path: Path, fields: dict[str, Any]
) -> None:
    write_mixed(tmp_path / "model.safetensors")
    source = Source(path=tmp_path)
    assert estimate_bytes(ModelSpec(**fields), source) == MIXED_BYTES
    assert weight_files_bytes(source, None) == MIXED_BYTES


def test_estimate_sums_safetensors_headers(tmp_path: Path) -> None:
    write_mixed(tmp_path / "model-00001-of-00002.safetensors")
    save_file(
        {"w": torch.zeros(25, dtype=torch.float32)}, tmp_path / "model-00002-of-00002.safetensors"
    )
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "pytorch_model.bin")  # ignored: safetensors win
    assert estimate_bytes(spec(), Source(path=tmp_path)) == MIXED_BYTES + 100


def test_estimate_halves_float32_weights_loaded_as_float16(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(1000, dtype=torch.float32)}, tmp_path / "model.safetensors")
    assert estimate_bytes(spec(dtype="float16"), Source(path=tmp_path)) == 2000
    assert estimate_bytes(spec(dtype="float32"), Source(path=tmp_path)) == 4000


def test_estimate_of_float16_weights_loaded_as_float16(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(1000, dtype=torch.float16)}, tmp_path / "model.safetensors")
    assert estimate_bytes(spec(dtype="float16"), Source(path=tmp_path)) == 2000


def test_estimate_falls_back_to_pickle_weight_file_sizes(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1000)}, tmp_path / "pytorch_model.bin")
    torch.save({"w": torch.zeros(10)}, tmp_path / "extra.pt")
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 1}))
    expected = (tmp_path / "pytorch_model.bin").stat().st_size + (
        tmp_path / "extra.pt"
    ).stat().st_size
    assert expected > 4000
    assert estimate_bytes(spec(), Source(path=tmp_path)) == expected


def test_estimate_is_none_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert estimate_bytes(spec(), Source(path=tmp_path)) is None
    assert estimate_bytes(spec(), Source(path=tmp_path / "missing")) is None
    assert estimate_bytes(spec(), Source(path=None, repo="org/name")) is None
    assert estimate_bytes(spec(), None) is None


def test_estimate_is_none_for_a_corrupt_safetensors_file(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"garbage!garbage!")
    assert estimate_bytes(spec(), Source(path=tmp_path)) is None


def test_measure_a_module_counts_parameters_and_buffers() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    # Linear: 12 + 3 float32; BatchNorm: weight, bias, running mean/var (4 x 3 float32)
    # and num_batches_tracked (one int64)
    assert measure_bytes(model) == (15 + 12) * 4 + 8


def test_measure_counts_each_dtype_size() -> None:
    assert measure_bytes(nn.Linear(4, 4).half()) == 20 * 2


class Holder:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


def test_tied_linear_weights_are_counted_once() -> None:
    first = nn.Linear(8, 8, bias=False)
    second = nn.Linear(8, 8, bias=False)
    second.weight = first.weight
    assert measure_bytes(nn.Sequential(first, second)) == 8 * 8 * 4
    assert measure_bytes(Holder(first=first, second=second)) == 8 * 8 * 4


def test_tied_embedding_and_head_are_counted_once() -> None:
    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight
    assert measure_bytes(Holder(embed=embed, head=head)) == 10 * 4 * 4


def test_untied_twins_are_counted_twice() -> None:
    first = nn.Linear(8, 8, bias=False)
    second = nn.Linear(8, 8, bias=False)
    assert measure_bytes(Holder(first=first, second=second)) == 2 * 8 * 8 * 4


def test_measure_finds_modules_in_attributes() -> None:
    linear = nn.Linear(2, 2)  # 6 float32
    assert measure_bytes(Holder(model=linear, name="pipe")) == 24
    assert measure_bytes(Holder(pipeline=Holder(model=linear))) == 24
    # the same module reachable twice is counted once
    assert measure_bytes(Holder(model=linear, inner=Holder(model=linear))) == 24


def test_measure_does_not_search_deeper_than_two_attributes() -> None:
    assert measure_bytes(Holder(a=Holder(b=Holder(c=nn.Linear(2, 2))))) is None


def test_reported_size_bytes_wins() -> None:
    assert measure_bytes(Holder(size_bytes=123)) == 123
    assert measure_bytes(Holder(size_bytes=123, model=nn.Linear(100, 100))) == 123


def test_measure_without_modules_is_none() -> None:
    assert measure_bytes(Holder(name="x", items=[1, 2], size_bytes="big")) is None
    assert measure_bytes("just a string") is None
    assert measure_bytes(None) is None


def test_rss_is_positive() -> None:
    assert rss_bytes() > 0


def test_release_memory_gives_freed_heap_back_to_the_os() -> None:
    """Freed heap chunks between live ones stay resident until malloc_trim returns them."""
    freed, keepers = [], []
    for _ in range(4000):
        freed.append(bytearray(16 * 1024))  # heap chunks (below glibc's mmap threshold)
        keepers.append(bytearray(1024))  # a live neighbour: the free chunks cannot coalesce
    del freed
    before = rss_bytes()
    given_back = release_memory()
    assert given_back > 16 * 2**20  # most of the 62 MiB freed comes back
    assert rss_bytes() <= before - given_back // 2
    del keepers


def test_release_memory_copes_with_a_half_imported_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown while a load thread is still importing torch: sys.modules holds a module
    without its `cuda` attribute yet; giving memory back must not fail the lifespan."""
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    assert release_memory() >= 0
