"""Ray Serve request router: send a request for model X to a replica that holds X.

Each registry replica reports, through Ray's routing-stats hook, the models it holds and its
free budget (`RegistryReplica.record_routing_stats`). Ray's controller polls that every
`request_routing_stats_period_s` and pushes it to every router, so the view is up to a period
(plus a poll) old. Two things cover that staleness:

- the router remembers where it sent each model itself (`_placed`), so a burst of requests for
  a cold model all follow the first one to the same replica instead of loading it everywhere;
- a model it has just sent towards a replica counts against that replica's free budget (once,
  at its best known size) until a report of that replica lists the model, so a burst of cold
  models spreads instead of piling onto the replica that looked emptiest a second ago. A report
  taken after the send but before the request arrived does not list the model yet, so it does
  not cancel it. A model a report lists as loading counts at its size even while the replica
  has not reserved its bytes yet (it may be waiting for a load permit).

Ranks: replicas holding (or loading) the model first, then the rest by free budget, most
first. Ray picks the least-loaded replica of the first rank that answers its queue-length probe
and has room for another request (max_ongoing_requests), and only then looks at the next rank.

A replica that would have to evict to load the model (its free budget is below the model's
size) is no fallback while some replica holds the model or has room for it, for the first
`spill_after_s` of the request: Ray's probe has a 0.1 s deadline, and on a busy host a late
answer from the right replica must not cost a load and an eviction on the wrong one. The
request waits (Ray backs off and probes again with a longer deadline) instead. After
`spill_after_s` every replica is a candidate again, so a saturated or stuck replica delays a
request by at most that long.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

HOLDING_STATES = frozenset({"loading", "loaded"})
DEFAULT_SIZE = 1 << 20  # bytes assumed for a model no replica has reported yet


class ModelAwareRouter(RequestRouter):
    """Model affinity first, then the most free budget (bytes, not a model count)."""

    def initialize_state(
        self, placement_memory_s: float = 5.0, spill_after_s: float = 10.0, **kwargs: Any
    ) -> None:
        """`placement_memory_s`: how long a routing decision outranks an older report;
        `spill_after_s`: how long a request waits before a replica that must evict is a
        candidate (see the module docstring)."""
        self._memory_s = placement_memory_s
        self._spill_after_s = spill_after_s
        self._placed: dict[str, dict[str, float]] = {}  # model -> replica id -> when
        # replica -> model -> when: sent there and not in its reports yet (counted once each)
        self._sent: dict[str, dict[str, float]] = {}

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Rank the candidates for the request's model (see the module docstring)."""
        model = pending_request.metadata.multiplexed_model_id if pending_request else ""
        if not model or not candidate_replicas:
            return [candidate_replicas]
        assert pending_request is not None
        # A round where no rank could take the request backs off before the next (as Ray's
        # own routers do) instead of probing again at once.
        pending_request.routing_context.should_backoff = True
        now = time.time()
        sizes = Sizes(r.routing_stats or {} for r in self.curr_replicas.values())
        holding: list[RunningReplica] = []
        free: dict[str, int] = {}
        for replica in candidate_replicas:
            if self._holds(replica, model, now):
                holding.append(replica)
            else:
                free[replica.replica_id.unique_id] = self._free(replica, now, sizes)
        others = [r for r in candidate_replicas if r.replica_id.unique_id in free]
        others.sort(key=lambda r: free[r.replica_id.unique_id], reverse=True)
        size = sizes.of(model)
        roomy = [r for r in others if free[r.replica_id.unique_id] >= size]
        if (holding or roomy) and now - pending_request.created_at < self._spill_after_s:
            others = roomy
        ranks = [holding] if holding else []
        ranks.extend([r] for r in others)
        return ranks

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: object
    ) -> None:
        """Remember where the model went, and that its bytes are on their way if that replica
        did not hold it."""
        model = pending_request.metadata.multiplexed_model_id
        if not model:
            return
        now = time.time()
        rid = replica_id.unique_id
        replica = self.curr_replicas.get(replica_id)
        if replica is not None and not self._reported(replica, model):
            self._sent.setdefault(rid, {}).setdefault(model, now)  # first send counts
        self._placed.setdefault(model, {})[rid] = now

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        """Forget a dead replica: its models load elsewhere on their next request."""
        super().on_replica_actor_died(replica_id)
        rid = replica_id.unique_id
        self._sent.pop(rid, None)
        for places in self._placed.values():
            places.pop(rid, None)

    # ------------------------------------------------------------------ helpers

    def _holds(self, replica: RunningReplica, model: str, now: float) -> bool:
        if self._reported(replica, model):
            return True
        when = self._placed.get(model, {}).get(replica.replica_id.unique_id)
        if when is None:
            return False
        # A decision newer than the replica's last report stands; an older one was either
        # confirmed by that report (handled above) or the model has been evicted since.
        return when > _reported_at(replica) or now - when < self._memory_s

    @staticmethod
    def _reported(replica: RunningReplica, model: str) -> bool:
        stats = replica.routing_stats or {}
        models: dict[str, Any] = stats.get("models", {})
        entry = models.get(model)
        return entry is not None and entry.get("state") in HOLDING_STATES

    def _free(self, replica: RunningReplica, now: float, sizes: Sizes) -> int:
        stats = replica.routing_stats or {}
        if "free_bytes" in stats:
            free = int(stats["free_bytes"])
        else:  # not polled yet: a replica that just started (or restarted) holds nothing
            free = max(
                (
                    int((r.routing_stats or {}).get("budget_bytes", 0))
                    for r in self.curr_replicas.values()
                ),
                default=0,
            )
        if "budget_bytes" in stats:
            # A model the report lists as loading may still wait for a load permit, with no
            # bytes reserved yet: count every listed model at its size.
            listed = [
                m for m, e in stats.get("models", {}).items() if e.get("state") in HOLDING_STATES
            ]
            free = min(free, int(stats["budget_bytes"]) - sum(sizes.of(m) for m in listed))
        sent = self._sent.get(replica.replica_id.unique_id, {})
        # A model sent there counts until a report lists it (loading or loaded: then it is in
        # the used bytes). A report newer than the send but without the model was taken before
        # the request arrived, so it does not settle it; only the placement memory expires it.
        # Its size is today's best knowledge, not the guess made when it was sent.
        for model, when in list(sent.items()):
            if self._reported(replica, model) or now - when >= self._memory_s:
                del sent[model]
        return free - sum(sizes.of(model) for model in sent)


class Sizes:
    """Model sizes as the replicas report them: measured where a replica loaded the model,
    else a replica's estimate (taken at the model's first load there), else the mean of the
    known sizes, else a default."""

    def __init__(self, reports: Iterable[dict[str, Any]]) -> None:
        self._measured: dict[str, int] = {}
        self._estimated: dict[str, int] = {}
        for stats in reports:
            for name, entry in stats.get("models", {}).items():
                if entry.get("size_bytes"):
                    known = self._measured if entry.get("size_measured") else self._estimated
                    known.setdefault(name, int(entry["size_bytes"]))
        known = {**self._estimated, **self._measured}
        self._default = sum(known.values()) // len(known) if known else DEFAULT_SIZE

    def of(self, model: str) -> int:
        """The best known size of `model`."""
        return self._measured.get(model) or self._estimated.get(model) or self._default


def _reported_at(replica: RunningReplica) -> float:
    """Wall-clock time of the replica's last report (hosts are assumed NTP-synced)."""
    stats = replica.routing_stats or {}
    return float(stats.get("reported_at", 0.0))
