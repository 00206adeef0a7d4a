"""Devices: names, a model's device spec, discovery, memory per process on a device, placement."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devkit.demo import REPO
from registry.memory import devices
from registry.memory.device_usage import (
    LEDGER_ENV,
    Ledger,
    device_used,
    ledger,
    process_bytes,
    processes_bytes,
)
from registry.memory.devices import (
    Device,
    DeviceRoom,
    Placement,
    budget_device,
    discover,
    gpu_index,
    is_gpu,
    parse_device_spec,
    place,
    visible_indices,
)
from registry.units import total_memory

GiB = 1024**3

# ------------------------------------------------------------------------------ names


def test_device_names() -> None:
    """cuda:N is a GPU with index N; cpu, mps and a bare cuda are not one GPU; mps spends the
    host's budget (unified memory)."""
    assert [is_gpu(n) for n in ("cuda:0", "cuda:12", "cuda", "cpu", "mps", "cuda:x")] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert gpu_index("cuda:3") == 3
    with pytest.raises(ValueError, match="not a GPU name"):
        gpu_index("cuda")
    assert (budget_device("mps"), budget_device("cpu"), budget_device("cuda:1")) == (
        "cpu",
        "cpu",
        "cuda:1",
    )


# ------------------------------------------------------------------------ device specs

PRESENT = ["cpu", "cuda:0", "cuda:1", "cuda:2"]


@pytest.mark.parametrize(
    ("value", "candidates"),
    [
        ("cpu", ["cpu"]),
        ("cuda", ["cuda:0", "cuda:1", "cuda:2"]),
        ("cuda:1", ["cuda:1"]),
        ("cuda:7", []),
        ("auto", ["cuda:0", "cuda:1", "cuda:2", "cpu"]),
        ("mps", ["mps"]),
        (["cuda:2", "cuda:0"], ["cuda:2", "cuda:0"]),
        (["cuda:1", "cuda"], ["cuda:1", "cuda:0", "cuda:2"]),
        (["cuda:1", "cpu"], ["cuda:1", "cpu"]),
        (["cuda:5", "cuda:0"], ["cuda:0"]),
    ],
)
def test_candidates_expand_a_spec_against_the_devices_present(
    value: str | list[str], candidates: list[str]
) -> None:
    """`cuda` is every GPU, `auto` every GPU then the host, a list keeps its order and
    drops what is not present (and never repeats a device)."""
    assert parse_device_spec(value).candidates(PRESENT) == candidates


def test_auto_without_gpus_is_the_host() -> None:
    """On a machine without GPUs, auto places on the host and cuda on nothing."""
    assert parse_device_spec("auto").candidates(["cpu"]) == ["cpu"]
    assert parse_device_spec("cuda").candidates(["cpu"]) == []


def test_spec_properties() -> None:
    """wants_gpu says whether discovery must look for GPUs; pinned names the one device
    a spec allows whatever is present; first_choice is what loaders use today."""
    assert parse_device_spec("cpu").wants_gpu is False
    assert parse_device_spec("mps").wants_gpu is False
    assert all(parse_device_spec(v).wants_gpu for v in ("cuda", "auto", "cuda:0", ["cpu", "cuda"]))
    assert [parse_device_spec(v).pinned for v in ("cpu", "cuda:1", "cuda", "auto")] == [
        "cpu",
        "cuda:1",
        None,
        None,
    ]
    assert parse_device_spec(["cuda:1", "cuda:0"]).pinned is None
    assert parse_device_spec(["cuda:1", "cuda:0"]).first_choice() == "cuda:1"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("gpu", "device 'gpu' must be cpu, cuda, cuda:N, mps or auto"),
        ("cuda:", "device 'cuda:' must be cpu, cuda, cuda:N, mps or auto"),
        ([], "a device list must name at least one of cpu, cuda or cuda:N"),
        (["cuda:0", "auto"], "device list entry 'auto' must be cpu, cuda or cuda:N"),
        (["mps"], "device list entry 'mps' must be cpu, cuda or cuda:N"),
        (["cuda:0", "cuda:0", "cpu", "cpu"], "device list names cpu, cuda:0 more than once"),
    ],
)
def test_bad_specs_say_what_to_write(value: str | list[str], message: str) -> None:
    """A wrong device is a ValueError that says what a device may be."""
    with pytest.raises(ValueError) as info:
        parse_device_spec(value)
    assert message in str(info.value)


# --------------------------------------------------------------------------- discovery


def test_simulated_devices_replace_real_ones() -> None:
    """Simulated GPUs come after the host, in index order, with their configured sizes."""
    found = discover({"cuda:1": 4 * GiB, "cuda:0": 8 * GiB}, gpus=True)
    assert [(d.name, d.total, d.kind) for d in found] == [
        ("cpu", total_memory(), "host"),
        ("cuda:0", 8 * GiB, "simulated"),
        ("cuda:1", 4 * GiB, "simulated"),
    ]
    assert [d.index for d in found] == [None, 0, 1]


def test_no_gpu_asked_for_means_no_gpu_looked_for() -> None:
    """Without a model that may use a GPU, discovery is the host alone, and neither torch
    nor NVML is imported (checked in a fresh interpreter)."""
    code = (
        "import sys\n"
        "from registry.memory.devices import discover\n"
        "print([d.name for d in discover({}, gpus=False)])\n"
        "print('torch' in sys.modules, 'pynvml' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == ["['cpu']", "False False"]


def test_a_config_the_host_can_take_imports_no_torch(tmp_path: Path) -> None:
    """Checking a config whose models all may run on the host (cpu, auto, a list with cpu)
    looks for no GPU: it imports no torch or NVML."""
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  a: {loader: fake, device: cpu, options: {size: 1MB}}\n"
        "  b: {loader: fake, device: auto}\n  c: {loader: fake, device: [cuda:1, cpu]}\n"
    )
    code = (
        "import sys\n"
        "from registry.config.file import load_config\n"
        f"load_config({str(path)!r})\n"
        "print('torch' in sys.modules, 'pynvml' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False False"


def test_real_discovery_on_this_machine_finds_what_torch_finds() -> None:
    """Asked for GPUs with no simulation, discovery returns the host and the GPUs torch (or
    NVML) reports: on a CPU-only machine, the host alone."""
    import torch

    found = discover({}, gpus=True)
    assert found[0].name == "cpu"
    assert len(found) - 1 == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


@pytest.mark.parametrize(
    ("env", "indices"),
    [
        (None, [0, 1, 2, 3]),
        ("", []),
        ("2,0", [2, 0]),
        ("1,9,2", [1]),  # CUDA stops at the first entry that names no GPU
        ("GPU-bbb", [1]),
        ("GPU-c,3", [2, 3]),
        ("GPU-", []),  # a prefix that names several GPUs names none
        ("0,0", []),
        (" 3 , 1 ", [3, 1]),
        ("-1", []),
    ],
)
def test_cuda_visible_devices_maps_cuda_numbers_to_nvml_indices(
    env: str | None, indices: list[int]
) -> None:
    """CUDA_VISIBLE_DEVICES, with indices or UUID prefixes, read as CUDA reads it."""
    uuids = ["GPU-aaa0", "GPU-bbb1", "GPU-ccc2", "GPU-ddd3"]
    assert visible_indices(env, uuids) == indices


# ---------------------------------------------------------------- NVML (a stand-in driver)


@dataclass
class _Proc:
    pid: int
    usedGpuMemory: int | None  # NVML's own name


@dataclass
class _Mem:
    total: int
    used: int


def _stand_in_nvml(procs: dict[int, list[_Proc]]) -> types.ModuleType:
    """A stand-in for the pynvml module over two GPUs (the real one needs an NVIDIA driver)."""
    module = types.ModuleType("pynvml")
    totals = [80 * GiB, 40 * GiB]
    names = [b"NVIDIA H100", "NVIDIA A100"]  # old bindings return bytes
    module.nvmlInit = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    module.nvmlDeviceGetUUID = lambda h: f"GPU-{h}{h}{h}"  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda h: names[h]  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda h: _Mem(totals[h], 3 * GiB)  # type: ignore[attr-defined]
    module.nvmlDeviceGetComputeRunningProcesses = lambda h: procs.get(h, [])  # type: ignore[attr-defined]
    module.nvmlDeviceGetGraphicsRunningProcesses = lambda h: [  # type: ignore[attr-defined]
        p for p in procs.get(h, []) if p.pid == 200
    ]  # pid 200 has a graphics context too: NVML lists it twice
    return module


@pytest.fixture
def nvml_procs(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[int, list[_Proc]]]:
    procs: dict[int, list[_Proc]] = {}
    monkeypatch.setitem(sys.modules, "pynvml", _stand_in_nvml(procs))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices._nvml_module.cache_clear()
    yield procs
    devices._nvml_module.cache_clear()


def test_nvml_discovery_and_per_process_memory(
    nvml_procs: dict[int, list[_Proc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With NVML, GPUs come with their totals and names, each process's used memory is
    read per device (once, though NVML lists a process with a graphics context twice), and
    a process NVML does not list holds 0."""
    found = discover({}, gpus=True)
    assert [(d.name, d.total, d.kind, d.label) for d in found[1:]] == [
        ("cuda:0", 80 * GiB, "nvml", "NVIDIA H100"),
        ("cuda:1", 40 * GiB, "nvml", "NVIDIA A100"),
    ]
    gpu0, gpu1 = found[1:]
    nvml_procs[0] = [_Proc(100, 1 * GiB), _Proc(200, 2 * GiB)]
    nvml_procs[1] = [_Proc(200, 5 * GiB)]
    assert process_bytes(gpu0, 100) == 1 * GiB
    assert process_bytes(gpu1, 100) == 0
    assert processes_bytes(gpu0, [100, 200]) == 3 * GiB
    assert processes_bytes(gpu1, [100, 200]) == 5 * GiB
    assert device_used(gpu0) == 3 * GiB
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [(d.name, d.total) for d in discover({}, gpus=True)[1:]] == [("cuda:0", 40 * GiB)]


def test_nvml_hidden_figures_are_unknown_not_zero(nvml_procs: dict[int, list[_Proc]]) -> None:
    """Where the driver hides a process's figure (usedGpuMemory None), it is unknown (None),
    never counted as 0."""
    gpu0 = discover({}, gpus=True)[1]
    nvml_procs[0] = [_Proc(100, None)]
    assert process_bytes(gpu0, 100) is None
    assert processes_bytes(gpu0, [100]) is None


def test_host_and_cpu_torch_devices_are_not_measured_here() -> None:
    """The host's memory per process is measured elsewhere; a torch-only GPU is measured
    for this process alone."""
    host = discover({}, gpus=False)[0]
    assert process_bytes(host, os.getpid()) is None
    assert process_bytes(Device("cuda:0", GiB, "torch"), os.getpid() + 1) is None
    assert device_used(host) is None


# ------------------------------------------------------------------ the simulated ledger


@pytest.fixture
def own_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger"))
    return ledger()


def test_claims_add_up_per_device_and_process(own_ledger: Ledger) -> None:
    """Claims on a simulated GPU are counted per device and per process, grow, and are
    given back by release (twice is harmless)."""
    gpu0 = Device("cuda:0", 8 * GiB, "simulated")
    gpu1 = Device("cuda:1", 4 * GiB, "simulated")
    a = own_ledger.claim("cuda:0", 100, owner="a")
    b = own_ledger.claim("cuda:0", 50, owner="b/with:odd chars")
    c = own_ledger.claim("cuda:1", 7, owner="c")
    assert (process_bytes(gpu0, os.getpid()), process_bytes(gpu1, os.getpid())) == (150, 7)
    assert process_bytes(gpu0, os.getpid() + 1) == 0
    a.grow(25)
    assert (a.nbytes, device_used(gpu0)) == (125, 175)
    b.release()
    b.release()
    assert device_used(gpu0) == 125
    a.release()
    c.release()
    assert (device_used(gpu0), device_used(gpu1)) == (0, 0)
    with pytest.raises(ValueError, match="cannot be negative"):
        own_ledger.claim("cuda:0", -1)


def test_a_child_process_claim_is_seen_and_its_death_gives_it_back(own_ledger: Ledger) -> None:
    """A claim made by another process is counted under its pid while it runs, and dropped
    once it has died without releasing it (as a GPU frees a dead process's memory)."""
    code = (
        "import os, sys\n"
        "from registry.memory.device_usage import ledger\n"
        "ledger().claim('cuda:1', 4096, owner='child')\n"
        "print(os.getpid(), flush=True)\n"
        "sys.stdin.readline()\n"
        "os._exit(0)\n"  # no release: a crash
    )
    gpu1 = Device("cuda:1", 4 * GiB, "simulated")
    with subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        pid = int(child.stdout.readline())
        assert process_bytes(gpu1, pid) == 4096
        assert device_used(gpu1) == 4096
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(timeout=60)
    assert process_bytes(gpu1, pid) == 0
    assert device_used(gpu1) == 0
    assert list((own_ledger.root / "cuda:1").iterdir()) == []  # the stale claim is removed


def test_a_claim_of_an_earlier_process_with_the_same_pid_is_not_counted(
    own_ledger: Ledger,
) -> None:
    """A claim left by a dead process whose pid is now another process's (here: ours, with
    another start time) is not counted for it, and is removed."""
    stale = own_ledger.root / "cuda:0" / f"{os.getpid()}-1-0-old"
    stale.parent.mkdir(parents=True)
    stale.write_text("999")
    claim = own_ledger.claim("cuda:0", 5, owner="new")
    assert own_ledger.claimed("cuda:0", os.getpid()) == 5
    assert not stale.exists()
    claim.release()


# --------------------------------------------------------------------------- placement


def no_eviction(device: str, need: int) -> float | None:
    raise AssertionError(f"no eviction should be priced, was asked for {need} on {device}")


def test_placement_takes_the_device_with_room_and_most_left() -> None:
    """Where several devices take a model without evicting, the one with the most room
    left after the load wins (models spread over GPUs)."""
    rooms = [DeviceRoom("cuda:0", 100, 60, 60), DeviceRoom("cuda:1", 100, 20, 20)]
    assert place(30, rooms, no_eviction) == Placement("cuda:1", "fits", 0.0)


def test_placement_prefers_no_eviction_to_any_eviction() -> None:
    """A device that needs no eviction beats one with more room that would need some."""
    rooms = [DeviceRoom("cuda:0", 1000, 990, 990), DeviceRoom("cuda:1", 100, 50, 0)]
    assert place(40, rooms, lambda d, n: 0.5).device == "cuda:1"


def test_placement_evicts_where_it_costs_least() -> None:
    """When every device must evict, the one whose victims cost least to reload is chosen,
    and the cost function is asked for exactly the bytes missing there."""
    asked: list[tuple[str, int]] = []
    prices = {"cuda:0": 9.0, "cuda:1": 2.0, "cuda:2": 4.0}

    def cost(device: str, need: int) -> float:
        asked.append((device, need))
        return prices[device]

    rooms = [
        DeviceRoom("cuda:0", 100, 90, 90),
        DeviceRoom("cuda:1", 100, 80, 80),
        DeviceRoom("cuda:2", 100, 95, 95),
    ]
    assert place(50, rooms, cost) == Placement("cuda:1", "evict", 2.0)
    assert asked == [("cuda:0", 40), ("cuda:1", 30), ("cuda:2", 45)]


def test_placement_skips_devices_that_cannot_make_room() -> None:
    """A device whose evictable bytes are too few, or whose cost function says it cannot
    be done (None), is never chosen."""
    rooms = [
        DeviceRoom("cuda:0", 100, 90, 10),  # 40 missing, 10 evictable
        DeviceRoom("cuda:1", 100, 90, 90),  # the cost function refuses
        DeviceRoom("cuda:2", 100, 90, 90),
    ]

    def cost(device: str, need: int) -> float | None:
        return None if device == "cuda:1" else 7.0

    assert place(50, rooms, cost) == Placement("cuda:2", "evict", 7.0)


def test_placement_waits_when_room_may_come_and_is_too_large_when_it_never_can() -> None:
    """No device has room now: `wait` if some candidate's budget could hold the model
    once its models become evictable, `too_large` if it exceeds every budget."""
    busy = [DeviceRoom("cuda:0", 100, 100, 0), DeviceRoom("cuda:1", 50, 0, 0)]
    assert place(80, busy, lambda d, n: 1.0) == Placement(None, "wait")
    assert place(101, busy, lambda d, n: 1.0) == Placement(None, "too_large")
    assert place(1, [], lambda d, n: 1.0) == Placement(None, "too_large")


def test_placement_ties_go_to_the_device_listed_first() -> None:
    """Equal cost and equal room: the candidate order (the order the user wrote) decides."""
    rooms = [DeviceRoom("cuda:1", 100, 0, 0), DeviceRoom("cuda:0", 100, 0, 0)]
    assert place(10, rooms, no_eviction).device == "cuda:1"
    assert place(10, rooms[::-1], no_eviction).device == "cuda:0"


def test_placement_fits_exactly() -> None:
    """A model that fills a device's room to the byte fits without eviction."""
    assert place(40, [DeviceRoom("cuda:0", 100, 60, 60)], no_eviction).outcome == "fits"
