"""Merge the replicas' reports (RegistryReplica.stats) into one view of the whole deployment."""

from __future__ import annotations

from typing import Any

# When replicas disagree, a model's deployment-wide state is the most available one.
_STATE_RANK = {"loaded": 0, "loading": 1, "unloading": 2, "failed": 3, "unloaded": 4}
_SUMMED = ("in_flight", "queued", "load_count", "served")


def merge_snapshots(
    reports: dict[str, dict[str, Any]], blank: dict[str, dict[str, Any]], unreachable: list[str]
) -> dict[str, Any]:
    """One GET /models body: per replica budget and use, per model its state on each replica.

    `blank` holds every configured model's entry as an untouched replica would show it.
    """
    replicas = sorted(reports)
    first = reports[replicas[0]] if replicas else {}
    per_replica = []
    models: dict[str, dict[str, Any]] = {}
    for rid in replicas:
        report = reports[rid]
        held = sorted(n for n, m in report["models"].items() if m["state"] in ("loading", "loaded"))
        per_replica.append(
            {
                "replica": rid,
                "pid": report["pid"],
                "budget_bytes": report["budget_bytes"],
                "used_bytes": report["used_bytes"],
                "free_bytes": report["free_bytes"],
                "peak_used_bytes": report["peak_used_bytes"],
                "models": held,
            }
        )
        for name, entry in blank.items():
            _merge_model(models, rid, report["models"].get(name, entry))
    restoring = any(reports[rid].get("budget_state") == "restoring" for rid in replicas)
    return {
        "budget_bytes": sum(r["budget_bytes"] for r in per_replica),
        "used_bytes": sum(r["used_bytes"] for r in per_replica),
        "reserved_bytes": sum(reports[rid].get("reserved_bytes", 0) for rid in replicas),
        "peak_used_bytes": sum(r["peak_used_bytes"] for r in per_replica),
        "budget_state": "restoring" if restoring else "ok",
        "abandoned_threads": sum(reports[rid].get("abandoned_threads", 0) for rid in replicas),
        "eviction": first.get("eviction"),
        "config_path": first.get("config_path"),
        "config_loaded_at": first.get("config_loaded_at"),
        "config_error": first.get("config_error"),
        "replicas": per_replica,
        "unreachable_replicas": sorted(unreachable),
        "models": [models[name] for name in sorted(models)],
    }


def merge_ready(reports: dict[str, dict[str, Any]], unreachable: list[str]) -> dict[str, Any]:
    """/health/ready: ready when every reachable replica is; the detail is per replica."""
    ready = bool(reports) and all(r["ready"] for r in reports.values())
    return {
        "status": "ready" if ready else "starting",
        "replicas": {rid: reports[rid]["readiness"] for rid in sorted(reports)},
        "unreachable_replicas": sorted(unreachable),
    }


def _merge_model(models: dict[str, dict[str, Any]], rid: str, entry: dict[str, Any]) -> None:
    here = {
        "state": entry["state"],
        "size_bytes": entry["size_bytes"],
        "load_count": entry["load_count"],
        "served": entry["served"],
        "in_flight": entry["in_flight"],
        "error": entry["error"],
    }
    merged = models.get(entry["name"])
    if merged is None:
        merged = models[entry["name"]] = {**entry, "replicas": {}}
    else:
        for key in _SUMMED:
            merged[key] += entry[key]
        if _STATE_RANK.get(entry["state"], 9) < _STATE_RANK.get(merged["state"], 9):
            for key in ("state", "size_bytes", "size_measured", "last_used", "load_seconds"):
                merged[key] = entry[key]
        if entry["state"] in ("loading", "loaded"):
            merged["error"] = None  # held somewhere: an old failure elsewhere is not the story
    merged["replicas"][rid] = here
