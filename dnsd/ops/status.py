"""The status document (GET /v1/status): the running dnsd's state as JSON-ready data. The admin API
serves it, the status page renders it, `dnsd status` prints it."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dnsd.routing.overrides import Override
from dnsd.serving.workerstats import Totals, WorkerReport, combined

if TYPE_CHECKING:
    from dnsd.serving.service import Dnsd


def override_json(override: Override) -> dict:
    return {"registry": override.registry, "replica": override.replica, "kind": override.kind,
            "reason": override.reason, "actor": override.actor, "created_at": override.created_at,
            "expires_at": override.expires_at}


def status_document(dnsd: Dnsd) -> dict:
    snapshot = dnsd.engine.snapshot
    now = time.time()
    registries = []
    reports = dnsd.worker_reports()
    totals = combined(reports)
    every_worker = dnsd.worker_counters is not None and not dnsd.worker_counters.index
    shares = dnsd.engine.stats.recent_shares(totals.counts if every_worker else None)
    for plan in snapshot.plans:
        reg = plan.registry
        replicas = []
        for index, rep in enumerate(reg.replicas):
            health = snapshot.health.of(reg.name, rep.name)
            override = snapshot.overrides.get((reg.name, rep.name))
            replicas.append({"name": rep.name, "location": rep.location, "status": health.status.value,
                             "reason": health.reason, "trend": health.trend,
                             "age_seconds": round(now - health.since, 1) if health.since else None,
                             "global_routing": rep.global_routing, "serving": index in plan.serving,
                             "override": override_json(override) if override else None,
                             "recent_share": shares.get((reg.name, rep.name), 0.0)})
        registries.append({"name": reg.name, "routing": reg.routing, "all_down_policy": reg.all_down.mode,
                           "all_down_active": plan.all_down, "short_ttl": plan.short_ttl, "reason": plan.reason,
                           "replicas": replicas})
    feed = dnsd.feed
    return {"config": {"version": snapshot.config.digest[:12], "source": snapshot.config.source},
            "generation": snapshot.generation, "timeline": list(dnsd.timeline)[-50:],
            "health": {"feeds": [{"url": f.url, "error": f.error,
                                  "age_seconds": round(now - f.fetched_at, 1) if f.fetched_at else None}
                                 for f in feed.feeds] if feed else [],
                       "expired": bool(feed and feed.expired)},
            "queries": queries_json(totals, reports if dnsd.worker_counters is not None else None),
            "registries": registries, **({"cluster": cluster_json(dnsd)} if dnsd.members is not None else {}),
            **({"forwarding": forwarding_json(dnsd, totals)} if dnsd.forwarder is not None else {})}


def forwarding_json(dnsd: Dnsd, totals: Totals) -> dict:
    """Names outside the zone: who may use it, the upstreams in the order they are tried (SRTT) with
    their figures, and the cache. Counters are every worker's; the rest this process's."""
    forwarder = dnsd.forwarder
    assert forwarder is not None
    settings, counted = forwarder.settings, totals.forward
    upstreams = [{"address": up.address, "srtt_ms": round(up.srtt * 1000, 2), "queries": up.stats.queries,
                  "answers": up.stats.answers, "errors": {kind: n for kind, n in up.stats.errors.items() if n}}
                 for up in forwarder.upstreams.ranked()]
    cache = forwarder.cache
    return {"clients": [str(net) for net in settings.clients], "resolv_conf": settings.resolv_conf,
            "upstreams": upstreams,
            "queries": counted.get("queries", 0), "cache_hits": counted.get("cache_hits", 0),
            "cache_misses": counted.get("cache_misses", 0), "stale_served": counted.get("stale_served", 0),
            "servfail": counted.get("servfail", 0), "refused_clients": counted.get("refused_client", 0),
            "cache": {"entries": len(cache), "bytes": cache.bytes, "max_entries": cache.max_entries,
                      "max_bytes": cache.max_bytes, "serve_stale_seconds": settings.cache.serve_stale},
            "in_flight": forwarder.in_flight, "waiting": dnsd.engine.forward_pending}


def queries_json(totals: Totals, reports: list[WorkerReport] | None) -> dict:
    """Queries answered and dropped since start (every worker's); under --workers, each worker's too
    (a restarted worker's include its predecessors')."""
    doc: dict = {"answered": totals.answered, "dropped": totals.dropped}
    if reports is not None:
        doc["workers"] = [{"worker": r.index, "pid": r.pid, "answered": r.totals.answered, "dropped": r.totals.dropped,
                           "age_seconds": round(r.age_seconds, 1)} for r in reports]
    return doc


def cluster_json(dnsd: Dnsd) -> dict:
    """Every dnsd of the cluster as its registration in etcd says (this one live), each with what puts
    it out of step (another config, not synced lately, overrides behind)."""
    members = dnsd.members
    assert members is not None
    now = time.time()
    instances = [{"instance": m["instance"], "self": m["self"], "dns": m.get("dns", []), "admin": m.get("admin"),
                  "config_version": str(m.get("config"))[:12], "health_generation": m.get("health_generation"),
                  "overrides_revision": m.get("overrides_revision"), "connected": bool(m.get("connected")),
                  "last_sync_age_seconds": round(now - m["last_sync"], 1) if m.get("last_sync") else None,
                  "problems": m["problems"]}
                 for m in members.listing()]
    return {"connected": members.connected, "sync_bound_seconds": members.bound, "instances": instances}
