"""The deployment-wide views of Ray Serve (app/ray/aggregate.py), from hand-built reports."""

from __future__ import annotations

from typing import Any

from app.ray.aggregate import merge_ready, merge_snapshots


def entry(name: str, state: str = "unloaded", **fields: Any) -> dict[str, Any]:
    """A model's entry as a replica reports it."""
    base: dict[str, Any] = {
        "name": name,
        "state": state,
        "size_bytes": None,
        "size_measured": False,
        "last_used": None,
        "load_seconds": None,
        "load_count": 0,
        "served": 0,
        "in_flight": 0,
        "queued": 0,
        "error": None,
    }
    return {**base, **fields}


def report(models: dict[str, dict[str, Any]], used: int, *, ready: bool = True) -> dict[str, Any]:
    """One replica's routing report."""
    return {
        "pid": 100 + used,
        "budget_bytes": 100,
        "used_bytes": used,
        "free_bytes": 100 - used,
        "peak_used_bytes": used,
        "config_path": "/srv/models.yaml",
        "config_loaded_at": "2026-11-24T00:00:00+00:00",
        "config_error": None,
        "reserved_bytes": 0,
        "budget_state": "ok",
        "abandoned_threads": 0,
        "eviction": "cost",
        "models": models,
        "ready": ready,
        "readiness": {"status": "ready" if ready else "starting", "pending": [], "failed": {}},
    }


BLANK = {name: entry(name) for name in ("a", "b", "c")}


def test_budgets_and_use_add_up_and_each_replica_lists_what_it_holds() -> None:
    reports = {
        "r2": report({"b": entry("b", "loading", size_bytes=30)}, used=30),
        "r1": report({"a": entry("a", "loaded", size_bytes=40, load_count=1)}, used=40),
    }
    view = merge_snapshots(reports, BLANK, unreachable=["r3"])
    assert (view["budget_bytes"], view["used_bytes"], view["peak_used_bytes"]) == (200, 70, 70)
    assert [(r["replica"], r["models"], r["free_bytes"]) for r in view["replicas"]] == [
        ("r1", ["a"], 60),
        ("r2", ["b"], 70),
    ]
    assert view["unreachable_replicas"] == ["r3"]
    assert (view["budget_state"], view["abandoned_threads"], view["eviction"]) == ("ok", 0, "cost")
    states = {
        m["name"]: {rid: s["state"] for rid, s in m["replicas"].items()} for m in view["models"]
    }
    assert states == {
        "a": {"r1": "loaded", "r2": "unloaded"},
        "b": {"r1": "unloaded", "r2": "loading"},
        "c": {"r1": "unloaded", "r2": "unloaded"},
    }


def test_a_replica_restoring_its_budget_shows_for_the_deployment() -> None:
    restoring = {**report({}, used=90), "budget_state": "restoring", "abandoned_threads": 2}
    view = merge_snapshots({"r1": report({}, 10), "r2": restoring}, BLANK, unreachable=[])
    assert (view["budget_state"], view["abandoned_threads"]) == ("restoring", 2)


def test_a_model_shows_its_most_available_state_and_summed_counts() -> None:
    reports = {
        "r1": report({"a": entry("a", "failed", error="boom", load_count=1, served=2)}, used=0),
        "r2": report({"a": entry("a", "loaded", size_bytes=10, load_count=2, served=5)}, used=10),
    }
    (a, *_) = merge_snapshots(reports, BLANK, unreachable=[])["models"]
    assert a["state"] == "loaded" and a["size_bytes"] == 10
    assert (a["load_count"], a["served"]) == (3, 7)
    assert a["error"] is None  # held on r2: r1's old failure is not the story
    assert a["replicas"]["r1"]["error"] == "boom"


def test_ready_only_when_every_reachable_replica_is() -> None:
    ready = merge_ready({"r1": report({}, 0), "r2": report({}, 0)}, unreachable=[])
    assert ready["status"] == "ready" and sorted(ready["replicas"]) == ["r1", "r2"]
    starting = merge_ready({"r1": report({}, 0), "r2": report({}, 0, ready=False)}, [])
    assert starting["status"] == "starting"
    assert merge_ready({}, unreachable=["r1"])["status"] == "starting"
