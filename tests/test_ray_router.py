"""The request router's choices, on replica reports like the ones Ray hands it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.serve", reason="needs the [ray] extra")

from ray.serve._private.common import DeploymentID, ReplicaID

from app.ray.router import ModelAwareRouter

MB = 1_000_000


@dataclass
class Replica:
    """What the router reads of a RunningReplica."""

    replica_id: ReplicaID
    routing_stats: dict[str, Any] = field(default_factory=dict)


def replica(rid: str, free: int, held: dict[str, int] | None = None, at: float = 0.0) -> Replica:
    models = {name: {"state": "loaded", "size_bytes": size} for name, size in (held or {}).items()}
    stats = {
        "budget_bytes": 100 * MB,
        "free_bytes": free,
        "models": models,
        "reported_at": at or time.time(),
    }
    return Replica(ReplicaID(rid, DeploymentID("RegistryReplica", "app")), stats)


def knows(replica: Replica, sizes: dict[str, int]) -> None:
    """The replica has tried these models (not held now): it reports their estimated sizes."""
    for name, size in sizes.items():
        replica.routing_stats["models"].setdefault(
            name, {"state": "unloaded", "size_bytes": size, "size_measured": False}
        )


def router(replicas: list[Replica]) -> ModelAwareRouter:
    chooser = ModelAwareRouter.__new__(ModelAwareRouter)  # no Ray: only the policy
    chooser._replicas = {r.replica_id: r for r in replicas}  # what curr_replicas reads
    chooser.initialize_state()
    return chooser


def request(model: str, age: float = 0.0) -> Any:
    """A PendingRequest as the router reads it, created `age` seconds ago."""
    return SimpleNamespace(
        metadata=SimpleNamespace(multiplexed_model_id=model),
        created_at=time.time() - age,
        routing_context=SimpleNamespace(should_backoff=False),
    )


def choose(
    chooser: ModelAwareRouter, replicas: list[Replica], model: str, age: float = 0.0
) -> list[list[str]]:
    pending = request(model, age)
    ranks = asyncio.run(chooser.choose_replicas(replicas, pending))  # type: ignore[arg-type]
    assert pending.routing_context.should_backoff  # a round that finds no room backs off
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


def route(chooser: ModelAwareRouter, replicas: list[Replica], model: str) -> str:
    """Choose, then tell the router where the request went (as Ray does)."""
    first = choose(chooser, replicas, model)[0][0]
    chosen = next(r for r in replicas if r.replica_id.unique_id == first)
    chooser.on_request_routed(request(model), chosen.replica_id, None)
    return first


def test_the_replica_holding_the_model_ranks_first() -> None:
    replicas = [replica("a", 90 * MB), replica("b", 10 * MB, {"m": 5 * MB})]
    assert choose(router(replicas), replicas, "m") == [["b"], ["a"]]


def test_a_cold_model_goes_to_the_most_free_budget() -> None:
    replicas = [replica("a", 20 * MB), replica("b", 60 * MB), replica("c", 40 * MB)]
    assert choose(router(replicas), replicas, "x") == [["b"], ["c"], ["a"]]


def test_a_burst_of_cold_models_spreads_before_any_new_report() -> None:
    """Stale free bytes: what the router sent itself counts until the replica reports."""
    replicas = [
        replica("a", 50 * MB, {"seen": 10 * MB}),
        replica("b", 50 * MB - 1, {"seen": 10 * MB}),
    ]
    chooser = router(replicas)
    placed = [route(chooser, replicas, f"cold{i}") for i in range(4)]
    assert sorted(placed) == ["a", "a", "b", "b"]


def test_a_burst_for_one_cold_model_follows_the_first_request() -> None:
    """Stale holdings: requests racing a load go where the load was sent, not elsewhere."""
    replicas = [replica("a", 50 * MB), replica("b", 50 * MB)]
    chooser = router(replicas)
    first = route(chooser, replicas, "m")
    assert {route(chooser, replicas, "m") for _ in range(10)} == {first}


def test_an_eviction_reported_after_the_routing_decision_is_believed() -> None:
    """A replica's newer report that no longer lists the model wins once the memory expires."""
    replicas = [replica("a", 50 * MB), replica("b", 40 * MB)]
    chooser = router(replicas)
    chooser._memory_s = 0.0
    assert route(chooser, replicas, "m") == "a"
    replicas[0].routing_stats = {**replicas[0].routing_stats, "reported_at": time.time() + 1}
    replicas[0].routing_stats["free_bytes"] = 30 * MB  # it loaded other models since
    assert choose(chooser, replicas, "m")[0] == ["b"]


def test_a_replica_not_polled_yet_counts_as_empty() -> None:
    """A new (or restarted) replica without a report yet holds nothing: it gets cold models."""
    fresh = Replica(ReplicaID("new", DeploymentID("RegistryReplica", "app")))
    replicas = [replica("a", 20 * MB, {"m": 80 * MB}), fresh]
    assert choose(router(replicas), replicas, "x")[0] == ["new"]


def test_a_report_taken_before_the_request_arrived_keeps_the_bytes_sent() -> None:
    """The flake of test_ray's spreading test: a replica's report newer than the routing
    decision, but taken before the request reached it, must not cancel the bytes sent there."""
    replicas = [replica("a", 25 * MB), replica("b", 25 * MB)]
    for r in replicas:
        knows(r, {"m1": 10 * MB, "m2": 10 * MB})
    chooser = router(replicas)
    first = route(chooser, replicas, "m1")
    sent_to = replicas[0] if first == "a" else replicas[1]
    sent_to.routing_stats = {**sent_to.routing_stats, "reported_at": time.time() + 1}
    assert route(chooser, replicas, "m2") != first


def test_a_replica_that_must_evict_is_no_fallback_while_another_has_room() -> None:
    """When the roomy replica misses Ray's 0.1 s queue probe, Ray tries the next rank: that
    rank must not be a full replica (a load and an eviction) until the request has waited
    `spill_after_s`; after that, every replica is a candidate again."""
    sizes = {"x": 10 * MB, "y": 10 * MB, "z": 10 * MB}
    full = replica("a", 5 * MB, {"x": 10 * MB, "y": 10 * MB})
    roomy = replica("b", 15 * MB, {"w": 10 * MB})
    replicas = [full, roomy]
    for r in replicas:
        knows(r, sizes)
    chooser = router(replicas)
    assert choose(chooser, replicas, "z") == [["b"]]
    assert choose(chooser, replicas, "z", age=11.0) == [["b"], ["a"]]
    # A held model does not spill onto a replica that would have to evict for it either.
    roomy.routing_stats["free_bytes"] = 8 * MB
    assert choose(chooser, replicas, "x") == [["a"]]
    assert choose(chooser, replicas, "x", age=11.0) == [["a"], ["b"]]


def test_a_model_sent_again_before_its_report_counts_once() -> None:
    """Several requests racing one cold model's load hold its bytes once, not once each."""
    replicas = [replica("a", 30 * MB), replica("b", 15 * MB)]
    for r in replicas:
        knows(r, {"m": 10 * MB, "x": 10 * MB})
    chooser = router(replicas)
    assert [route(chooser, replicas, "m") for _ in range(4)] == ["a"] * 4
    assert route(chooser, replicas, "x") == "a"  # 20 MB left there, not -10 MB


def test_bytes_in_transit_count_at_the_size_known_now() -> None:
    """A model sent before any size was known counts at its size once a report gives it."""
    replicas = [replica("a", 20 * MB), replica("b", 15 * MB)]
    chooser = router(replicas)
    assert route(chooser, replicas, "c") == "a"  # size unknown yet: the 1 MiB default
    knows(replicas[1], {"c": 10 * MB, "d": 10 * MB})
    assert choose(chooser, replicas, "d")[0] == ["b"]  # a has 10 MB left, b 15 MB


def test_a_model_sent_again_after_its_report_is_settled_by_that_report() -> None:
    """The ray benchmark's 2.67x loads: a second request for a loading model, routed after
    the replica's report (listing it) was taken but before it arrived, kept the model's bytes
    counted on top of the report's, so every replica looked full and the next cold model
    evicted a busy one."""
    replicas = [replica("a", 30 * MB), replica("b", 15 * MB)]
    knows(replicas[0], {"m": 10 * MB, "x": 10 * MB})
    chooser = router(replicas)
    assert route(chooser, replicas, "m") == "a"
    replicas[0].routing_stats["models"]["m"]["state"] = "loading"  # the report lists it now
    replicas[0].routing_stats["free_bytes"] = 20 * MB
    assert route(chooser, replicas, "m") == "a"
    assert route(chooser, replicas, "x") == "a"  # 20 MB left there, not 10 MB


def test_models_listed_as_loading_count_before_their_bytes_are_reserved() -> None:
    """The ray benchmark's 2.75x loads: a replica reports a model as loading while it waits
    for a load permit, before its bytes are reserved, so its free bytes overstate its room."""
    replicas = [replica("a", 90 * MB, {"m1": 20 * MB, "m2": 20 * MB}), replica("b", 70 * MB)]
    for name in ("m1", "m2"):
        replicas[0].routing_stats["models"][name]["state"] = "loading"
    chooser = router(replicas)  # a: 100 MB budget - 40 MB listed = 60 MB; b: 70 MB
    assert route(chooser, replicas, "x") == "b"
