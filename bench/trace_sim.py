"""The trace benchmark's traces and offline bounds (pure Python, no server).

Traces are fixed by their seeds: Zipf(1.0) popularity over the models, a popularity shift
halfway, and a scan (one pass over every model) amid Zipf traffic. The bounds replay a trace
by bytes against the same budget: sequential LRU, a perfect frequency cache (it knows every
model's request count over the whole trace and evicts the least requested) and Belady's
optimum (evict the model whose next request is furthest in the future).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from registry.memory.budget import ByteBudget
from registry.memory.policy import Policy

Trace = list[str]


def zipf_weights(count: int, exponent: float = 1.0) -> list[float]:
    """Zipf popularity of ranks 1..count."""
    return [1.0 / (rank**exponent) for rank in range(1, count + 1)]


def _zipf(names: Sequence[str], length: int, rng: random.Random) -> Trace:
    ranked = list(names)
    rng.shuffle(ranked)  # which model gets which rank is part of the seed
    return rng.choices(ranked, weights=zipf_weights(len(ranked)), k=length)


def make_traces(names: Sequence[str], length: int, seed: int = 8) -> dict[str, Trace]:
    """The three fixed traces of `length` requests each."""
    zipf = _zipf(names, length, random.Random(seed))
    first = _zipf(names, length // 2, random.Random(seed + 1))
    second = _zipf(names, length - length // 2, random.Random(seed + 2))
    scan = _zipf(names, length - len(names), random.Random(seed + 3))
    middle = len(scan) // 2
    order = list(names)
    random.Random(seed + 4).shuffle(order)
    for i, name in enumerate(order):  # one pass over every model, every other request
        scan.insert(middle + 2 * i, name)
    return {"zipf": zipf, "shift": first + second, "scan": scan}


def _replay(
    trace: Trace,
    sizes: Mapping[str, int],
    budget: int,
    choose: Callable[[int, set[str]], str],
    on_use: Callable[[int, str], None] = lambda i, n: None,
) -> int:
    held: set[str] = set()
    used = 0
    loads = 0
    for i, name in enumerate(trace):
        on_use(i, name)
        if name in held:
            continue
        loads += 1
        while used + sizes[name] > budget:
            victim = choose(i, held)
            held.discard(victim)
            used -= sizes[victim]
        held.add(name)
        used += sizes[name]
    return loads


def lru_loads(trace: Trace, sizes: Mapping[str, int], budget: int) -> int:
    """Loads of a sequential LRU cache by bytes."""
    last: dict[str, int] = {}

    def use(i: int, name: str) -> None:
        last[name] = i

    return _replay(trace, sizes, budget, lambda i, held: min(held, key=last.__getitem__), use)


def frequency_loads(trace: Trace, sizes: Mapping[str, int], budget: int) -> int:
    """Loads of a perfect frequency cache: evicts the model with the fewest requests overall."""
    counts = {name: trace.count(name) for name in set(trace)}
    return _replay(trace, sizes, budget, lambda i, held: min(held, key=counts.__getitem__))


def belady_loads(trace: Trace, sizes: Mapping[str, int], budget: int) -> int:
    """Loads of Belady's rule by bytes: evict the model whose next request is furthest away."""
    upcoming: dict[str, list[int]] = {}
    for i in range(len(trace) - 1, -1, -1):
        upcoming.setdefault(trace[i], []).append(i)  # each list: next index last

    def next_use(name: str) -> float:
        queue = upcoming.get(name)
        return queue[-1] if queue else float("inf")

    def use(i: int, name: str) -> None:
        upcoming[name].pop()  # request i is being served; what remains is the future

    def choose(i: int, held: set[str]) -> str:
        # Furthest next use first; among equals, the bigger one (frees more).
        return max(held - {trace[i]}, key=lambda n: (next_use(n), sizes[n]))

    return _replay(trace, sizes, budget, choose, use)


def bounds(trace: Trace, sizes: Mapping[str, int], budget: int) -> dict[str, int]:
    """Offline loads of the trace: sequential LRU, perfect frequency, Belady."""
    return {
        "lru_sequential": lru_loads(trace, sizes, budget),
        "frequency": frequency_loads(trace, sizes, budget),
        "belady": belady_loads(trace, sizes, budget),
    }


def policy_loads(
    trace: Trace,
    sizes: Mapping[str, int],
    budget: int,
    policy: Policy,
    reload_seconds: Mapping[str, float],
) -> int:
    """Loads of the server's own budget and policy (registry/), replayed sequentially."""
    bytes_budget: ByteBudget[str] = ByteBudget(budget, policy, reload_seconds.__getitem__)
    loads = 0
    for name in trace:
        if name not in bytes_budget:
            loads += 1
            victims = bytes_budget.victims(sizes[name], evictable=lambda n: True)
            for victim in victims or ():
                bytes_budget.evicted(victim)
                bytes_budget.release(victim)
            bytes_budget.reserve(name, sizes[name])
        bytes_budget.touch(name)
    return loads
