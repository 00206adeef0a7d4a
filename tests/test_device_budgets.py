"""Budgets per device: a ByteBudget for the host and for each GPU, eviction per device,
placement through the budgets, and a GPU's budget from models.yaml's shares."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

import pytest

from registry.memory.budget import ByteBudget
from registry.memory.device_budgets import (
    DEFAULT_GPU_SHARE,
    DeviceBudgets,
    DeviceTotals,
    Share,
    parse_share,
    resolve_limits,
)
from registry.memory.devices import Device, Placement

GiB = 1024**3


# ------------------------------------------------ the contract both kinds of budget keep


class OneBudget(Protocol):
    """What the lifecycle asks of its budget today, as the contract test drives it."""

    @property
    def used(self) -> int: ...
    @property
    def free(self) -> int: ...
    def reserve(self, key: str, nbytes: int) -> None: ...
    def release(self, key: str) -> int: ...
    def fits(self, nbytes: int, *, replacing: str | None = None) -> bool: ...
    def touch(self, key: str) -> None: ...
    def set_limit(self, limit: int) -> None: ...
    def victims(
        self,
        nbytes: int,
        *,
        evictable: Callable[[str], bool],
        freeing: Collection[str] = (),
        replacing: str | None = None,
    ) -> list[str] | None: ...


class OnDevice:
    """DeviceBudgets seen through one device, with the single budget's methods."""

    def __init__(self, budgets: DeviceBudgets[str], device: str) -> None:
        self.budgets = budgets
        self.device = device

    @property
    def used(self) -> int:
        return self.budgets.used(self.device)

    @property
    def free(self) -> int:
        return self.budgets.free(self.device)

    def reserve(self, key: str, nbytes: int) -> None:
        self.budgets.reserve(key, self.device, nbytes)

    def release(self, key: str) -> int:
        return self.budgets.release(key).get(self.device, 0)

    def fits(self, nbytes: int, *, replacing: str | None = None) -> bool:
        return self.budgets.fits(self.device, nbytes, replacing=replacing)

    def touch(self, key: str) -> None:
        self.budgets.touch(key)

    def set_limit(self, limit: int) -> None:
        self.budgets.set_limit(self.device, limit)

    def victims(
        self,
        nbytes: int,
        *,
        evictable: Callable[[str], bool],
        freeing: Collection[str] = (),
        replacing: str | None = None,
    ) -> list[str] | None:
        return self.budgets.victims(
            self.device, nbytes, evictable=evictable, freeing=freeing, replacing=replacing
        )


def single(limit: int) -> OneBudget:
    return ByteBudget(limit, "lru")


def host_of_many(limit: int) -> OneBudget:
    return OnDevice(DeviceBudgets({"cpu": limit, "cuda:0": 1000}, "lru"), "cpu")


def gpu_of_many(limit: int) -> OneBudget:
    budgets: DeviceBudgets[str] = DeviceBudgets({"cpu": 1000, "cuda:1": limit}, "lru")
    budgets.reserve("elsewhere", "cpu", 900)  # a full host changes nothing on the GPU
    return OnDevice(budgets, "cuda:1")


KINDS = pytest.mark.parametrize(
    "make", [single, host_of_many, gpu_of_many], ids=["ByteBudget", "host", "GPU"]
)


@KINDS
def test_contract_reserve_release_used_free(make: Callable[[int], OneBudget]) -> None:
    """Reserving adds to used, reserving again replaces, release gives the bytes back, and
    a reservation past the limit is refused with nothing changed."""
    budget = make(100)
    budget.reserve("a", 30)
    budget.reserve("b", 50)
    assert (budget.used, budget.free) == (80, 20)
    budget.reserve("a", 10)  # a measurement replacing an estimate
    assert budget.used == 60
    with pytest.raises(ValueError):
        budget.reserve("c", 41)
    with pytest.raises(ValueError):
        budget.reserve("d", 101)
    assert budget.used == 60
    assert budget.release("b") == 50
    assert budget.release("b") == 0
    assert (budget.used, budget.free) == (10, 90)


@KINDS
def test_contract_fits(make: Callable[[int], OneBudget]) -> None:
    """fits counts what is held, and what `replacing` holds as free."""
    budget = make(100)
    budget.reserve("a", 60)
    assert budget.fits(40) and not budget.fits(41)
    assert budget.fits(100, replacing="a")


@KINDS
def test_contract_victims_in_policy_order_and_minimal(make: Callable[[int], OneBudget]) -> None:
    """Victims are the least recently used evictable models, no more than the room needs;
    [] when it fits, None when evicting everything evictable would not do."""
    budget = make(100)
    for key in "abc":
        budget.reserve(key, 30)
    budget.touch("a")  # b is now the least recently used

    def anything(key: str) -> bool:
        return True

    assert budget.victims(10, evictable=anything) == []
    assert budget.victims(20, evictable=anything) == ["b"]
    assert budget.victims(50, evictable=anything) == ["b", "c"]
    assert budget.victims(20, evictable=lambda k: k != "b") == ["c"]
    assert budget.victims(20, evictable=anything, freeing=["c"]) == []
    assert budget.victims(70, evictable=lambda k: k == "b") is None
    assert budget.victims(40, evictable=anything, replacing="a") == []
    assert budget.victims(50, evictable=anything, replacing="a") == ["b"]


@KINDS
def test_contract_a_lowered_limit_leaves_used_above_it(make: Callable[[int], OneBudget]) -> None:
    """A lower limit keeps what is held (the caller evicts), and nothing more fits."""
    budget = make(100)
    budget.reserve("a", 80)
    budget.set_limit(50)
    assert (budget.used, budget.free, budget.fits(1)) == (80, 0, False)
    with pytest.raises(ValueError):
        budget.set_limit(0)


# ------------------------------------------------------------------ per device only


def two_gpus() -> DeviceBudgets[str]:
    return DeviceBudgets({"cpu": 1000, "cuda:0": 100, "cuda:1": 100}, "lru")


def test_victims_are_only_models_at_home_on_that_device() -> None:
    """Room on a GPU is made by evicting models on that GPU only: never one on another GPU,
    nor one on the host, however idle."""
    budgets = two_gpus()
    budgets.reserve("host-idle", "cpu", 500)
    budgets.reserve("gpu1-idle", "cuda:1", 90)
    budgets.reserve("gpu0-busy", "cuda:0", 60)
    budgets.reserve("gpu0-idle", "cuda:0", 30)
    assert budgets.victims("cuda:0", 30, evictable=lambda k: k != "gpu0-busy") == ["gpu0-idle"]
    assert budgets.victims("cuda:0", 50, evictable=lambda k: k != "gpu0-busy") is None
    assert budgets.victims("cuda:1", 20) == ["gpu1-idle"]


def test_a_gpu_model_host_part_is_not_a_victim_for_the_host() -> None:
    """A GPU model's host-side bytes count on the host, but a host load cannot evict that
    model: it lives on the GPU."""
    budgets = two_gpus()
    budgets.reserve("on-gpu", "cuda:0", 50, host_bytes=600)
    budgets.reserve("on-host", "cpu", 300)
    assert budgets.used("cpu") == 900
    assert budgets.victims("cpu", 400) == ["on-host"]
    assert budgets.victims("cpu", 800) is None


def test_reserve_takes_the_gpu_and_host_parts_together_or_neither() -> None:
    """A GPU model's reservation is its GPU bytes and its host bytes at once; if either
    does not fit, nothing is reserved and the error names the device."""
    budgets = two_gpus()
    budgets.reserve("big-host", "cpu", 950)
    with pytest.raises(ValueError, match="on cpu would exceed"):
        budgets.reserve("m", "cuda:0", 50, host_bytes=100)
    assert (budgets.used("cuda:0"), budgets.home("m"), budgets.holdings("m")) == (0, None, {})
    with pytest.raises(ValueError, match=r"more than the whole budget of cuda:1"):
        budgets.reserve("m", "cuda:1", 101)
    budgets.reserve("m", "cuda:0", 50, host_bytes=40)
    assert budgets.holdings("m") == {"cpu": 40, "cuda:0": 50}
    assert budgets.home("m") == "cuda:0"
    with pytest.raises(ValueError, match="host_bytes is a GPU model's host part"):
        budgets.reserve("h", "cpu", 10, host_bytes=5)


def test_a_new_home_gives_back_the_old_one() -> None:
    """Offloading a GPU model to the host (reserve on cpu) frees its GPU bytes; bringing it
    back frees the host copy but its host part."""
    budgets = two_gpus()
    budgets.reserve("m", "cuda:1", 80, host_bytes=10)
    budgets.reserve("m", "cpu", 80)  # offloaded: its weights in host memory
    assert (budgets.home("m"), budgets.holdings("m")) == ("cpu", {"cpu": 80})
    assert budgets.used("cuda:1") == 0
    budgets.reserve("m", "cuda:0", 80, host_bytes=10)
    assert budgets.holdings("m") == {"cpu": 10, "cuda:0": 80}
    assert budgets.release("m") == {"cpu": 10, "cuda:0": 80}
    assert [budgets.used(d) for d in budgets.devices] == [0, 0, 0]
    assert budgets.home("m") is None


def test_fixed_overhead_comes_off_what_models_may_hold() -> None:
    """A GPU's fixed overhead (the server's CUDA context) leaves less for models; the totals
    show the budget, the overhead, used and free; an overhead past the budget leaves room for
    nothing."""
    budgets = two_gpus()
    budgets.set_overhead("cuda:0", 30)
    assert budgets.fits("cuda:0", 70) and not budgets.fits("cuda:0", 71)
    budgets.reserve("m", "cuda:0", 50, host_bytes=5)
    assert budgets.totals() == [
        DeviceTotals("cpu", 1000, 0, 5, 995, 0),
        DeviceTotals("cuda:0", 100, 30, 50, 20, 1),
        DeviceTotals("cuda:1", 100, 0, 0, 100, 0),
    ]
    budgets.set_limit("cuda:0", 200)
    assert budgets.free("cuda:0") == 120
    budgets.release("m")
    budgets.set_overhead("cuda:0", 500)
    assert not budgets.fits("cuda:0", 2)
    with pytest.raises(ValueError):
        budgets.set_overhead("cuda:0", -1)


def test_devices_are_named_in_errors() -> None:
    """A device without a budget is a KeyError naming the devices that have one; the host
    must have a budget; a device gets one budget only."""
    budgets = two_gpus()
    with pytest.raises(KeyError, match="no budget for cuda:7; devices: cpu, cuda:0, cuda:1"):
        budgets.used("cuda:7")
    with pytest.raises(ValueError, match="the host"):
        DeviceBudgets({"cuda:0": 10})
    with pytest.raises(ValueError, match="already has a budget"):
        budgets.add_device("cuda:0", 10)


def test_place_through_the_budgets_evicts_the_cheapest_device() -> None:
    """Placement over two GPUs: the free one if any; else the GPU whose victims cost least
    to reload; busy models are never counted as evictable; a model too big for every GPU is
    too_large, one that fits a budget but not now waits."""
    budgets = two_gpus()
    reload_seconds = {"slow": 30.0, "quick": 0.5, "busy": 1.0}
    budgets.reserve("slow", "cuda:0", 80)
    budgets.reserve("quick", "cuda:1", 40)
    budgets.reserve("busy", "cuda:1", 40)

    def idle(key: str) -> bool:
        return key != "busy"

    gpus = ["cuda:0", "cuda:1"]
    assert budgets.place(gpus, 20, evictable=idle, cost_of=reload_seconds.get) == Placement(
        "cuda:0", "fits", 0.0
    )
    assert budgets.place(gpus, 50, evictable=idle, cost_of=reload_seconds.get) == Placement(
        "cuda:1", "evict", 0.5
    )
    assert budgets.place(["cuda:0"], 50, evictable=idle, cost_of=reload_seconds.get) == (
        Placement("cuda:0", "evict", 30.0)
    )
    assert budgets.place(gpus, 70, evictable=lambda k: False).outcome == "wait"
    assert budgets.place(gpus, 101, evictable=idle).outcome == "too_large"
    # the models being unloaded already count as free room
    assert budgets.place(["cuda:0"], 50, evictable=idle, freeing=["slow"]).outcome == "fits"


# ------------------------------------------------------------------ budgets as written


@pytest.mark.parametrize(
    ("value", "share"),
    [
        ("80%", Share(percent=80.0)),
        ("12.5 %", Share(percent=12.5)),
        ("10GiB", Share(nbytes=10 * GiB)),
        (2048, Share(nbytes=2048)),
    ],
)
def test_shares_are_bytes_or_percentages(value: object, share: Share) -> None:
    assert parse_share(value) == share


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0%", "a percentage of memory must be in (0, 100]"),
        ("150%", "a percentage of memory must be in (0, 100]"),
        ("x%", "is not a percentage such as 80%"),
        ("lots", "is not a size"),
        (0, "more than 0 bytes"),
        (True, "expected a size"),
    ],
)
def test_bad_shares_say_what_to_write(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_share(value)
    assert message in str(info.value)


def test_gpu_budgets_come_from_their_entry_else_cuda_else_the_default() -> None:
    """cuda:N's own entry wins over cuda's, which wins over the default share; a
    percentage is of that GPU's total; the host's budget is the scalar one."""
    gpus = [
        Device("cpu", 64 * GiB, "host"),
        Device("cuda:0", 80 * GiB, "simulated"),
        Device("cuda:1", 24 * GiB, "simulated"),
        Device("cuda:2", 10 * GiB, "simulated"),
    ]
    assert resolve_limits(2 * GiB, {}, gpus) == {
        "cpu": 2 * GiB,
        "cuda:0": int(80 * GiB * DEFAULT_GPU_SHARE),
        "cuda:1": int(24 * GiB * DEFAULT_GPU_SHARE),
        "cuda:2": int(10 * GiB * DEFAULT_GPU_SHARE),
    }
    shares = {"cuda": Share(percent=50.0), "cuda:1": Share(nbytes=3 * GiB)}
    assert resolve_limits(GiB, shares, gpus) == {
        "cpu": GiB,
        "cuda:0": 40 * GiB,
        "cuda:1": 3 * GiB,
        "cuda:2": 5 * GiB,
    }
    assert Share(percent=50.0).describe(10 * 10**9) == "5.0 GB (50% of 10.0 GB)"
    assert Share(nbytes=3 * 10**9).describe(10 * 10**9) == "3.0 GB"
