"""The read-only HTML status page: queries answered (every worker's), per registry a row per replica
(status, reason, age, override, recent share of global answers) and a timeline of recent changes.
Rendered from the status document (dnsd.ops.status) alone; the public variant from health_only(),
which keeps health and drops every detail."""
from __future__ import annotations

import datetime
from html import escape

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 6px}
.meta{color:#5b6475;margin-bottom:12px} .banner{padding:8px 12px;border-radius:6px;margin:8px 0;font-weight:600}
.warn{background:#fff3cd;color:#7a5600} .bad{background:#fde2e1;color:#8a1c17}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0001}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e5e7eb;vertical-align:top}
th{background:#eef0f4;font-weight:600}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px}
.online{background:#d7f5dd;color:#146c2e} .degraded{background:#fde2e1;color:#8a1c17}
.checking{background:#e5e7eb;color:#374151} .drain,.force_down{background:#fff3cd;color:#7a5600}
.force_up{background:#dbeafe;color:#1e40af}
.bar{background:#e5e7eb;border-radius:3px;height:10px;width:120px;display:inline-block;vertical-align:middle}
.bar span{display:block;height:10px;border-radius:3px;background:#3b82f6}
.reason{color:#5b6475;font-size:12px;max-width:480px} ol{background:#fff;padding:10px 10px 10px 36px;margin:0}
li{margin:2px 0} time{color:#5b6475;font-variant-numeric:tabular-nums}
"""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _clock(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%H:%M:%S")


def _timeline_text(event: dict) -> str:
    kind = event.get("event", "")
    if kind in ("routing", "routing_changed"):
        return (f"{event.get('registry')}: global name serves {', '.join(event.get('serving') or [])}"
                f"{' (ALL-DOWN POLICY)' if event.get('all_down') else ''}"
                f"{' — ' + event['trigger'] if event.get('trigger') else ''}")
    if kind == "health_changed":
        return (f"{event.get('registry')}/{event.get('replica')} {event.get('status')}"
                f"{': ' + event['reason'] if event.get('reason') else ''}")
    if kind.startswith("override"):
        return (f"{kind.replace('_', ' ')}: {event.get('kind')} {event.get('registry')}/{event.get('replica')}"
                f"{' by ' + event['actor'] if event.get('actor') else ''}"
                f"{' — ' + event['reason'] if event.get('reason') else ''}")
    if kind == "config_reloaded":
        return f"config reloaded: version {event.get('version')} ({'; '.join(event.get('changes', []))})"
    if kind == "config_reload_failed":
        return f"config reload FAILED ({event.get('problems')} problems), old config kept"
    return kind


def queries_text(queries: dict) -> str:
    """Answered and dropped since start; under --workers, each worker's share."""
    text = f"{queries['answered']} queries answered, {queries['dropped']} dropped since start"
    workers = queries.get("workers")
    if workers:
        text += f" by {len(workers)} workers (" + ", ".join(
            f"worker {w['worker']}: {w['answered']}" for w in workers) + ")"
    return text


def global_role(rep: dict) -> str:
    """Why a replica is or is not in the global answers, in one or two words."""
    if rep["serving"]:
        return "serving"
    if not rep["global_routing"]:
        return "routing off"
    override = rep["override"]
    if override and override["kind"] == "drain":
        return "drained"
    if override and override["kind"] == "force_down":
        return "forced down"
    return "degraded" if rep["status"] == "degraded" else "not serving"


PUBLIC_EVENTS = ("health_changed", "routing", "routing_changed")


def health_only(doc: dict) -> dict:
    """What anyone may see: each replica's status, trend, age and role in the global name, whether
    health expired, how many feeds fail, and status/routing changes. Not the config path or version,
    feed URLs or errors, probe reasons (they name internal addresses), override actors or reasons,
    routing policies, triggers, or traffic shares."""
    replica_keys = ("name", "location", "status", "trend", "age_seconds", "global_routing", "serving")
    registries = [{"name": reg["name"], "all_down_active": reg["all_down_active"],
                   "replicas": [{**{k: rep[k] for k in replica_keys}, "role": global_role(rep)}
                                for rep in reg["replicas"]]}
                  for reg in doc["registries"]]
    timeline = [{k: event.get(k) for k in ("at", "event", "registry", "replica", "status", "serving", "all_down")}
                for event in doc["timeline"] if event.get("event") in PUBLIC_EVENTS]
    feeds = doc["health"]["feeds"]
    return {"health": {"expired": doc["health"]["expired"], "feeds": len(feeds),
                       "feeds_failing": sum(1 for f in feeds if f["error"])},
            "registries": registries, "timeline": timeline}


def _head() -> list[str]:
    return ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            "<meta http-equiv='refresh' content='5'><title>geotm status</title>",
            f"<style>{STYLE}</style></head><body>", "<h1>geotm status</h1>"]


def _timeline(events: list[dict], parts: list[str]) -> None:
    parts.append("<h2>Recent changes</h2><ol reversed>")
    events = events[::-1][:40]
    if not events:
        parts.append("<li>nothing yet</li>")
    for event in events:
        parts.append(f"<li><time>{_clock(event['at'])}</time> {escape(_timeline_text(event))}</li>")
    parts.append("</ol></body></html>")


def render_public_page(doc: dict) -> str:
    """The page without the token: health only (see health_only)."""
    parts = _head()
    parts.append("<div class='meta'>health only · <a href='/details'>details</a> need the admin token</div>")
    health = doc["health"]
    if health["expired"]:
        parts.append("<div class='banner bad'>Health expired: no probe verdict within the TTL — "
                     "every replica counts as online (fail open).</div>")
    elif health["feeds_failing"]:
        parts.append(f"<div class='banner warn'>{health['feeds_failing']} of {health['feeds']} health feeds "
                     "not answering.</div>")
    for registry in doc["registries"]:
        parts.append(f"<h2 id='{escape(registry['name'])}'>{escape(registry['name'])}</h2>")
        if registry["all_down_active"]:
            parts.append("<div class='banner bad'>All replicas degraded: the all-down policy decides the "
                         "global answers.</div>")
        parts.append("<table><tr><th>replica</th><th>location</th><th>status</th><th>since</th>"
                     "<th>global</th></tr>")
        for rep in registry["replicas"]:
            trend = f" ({escape(rep['trend'])})" if rep["trend"] else ""
            parts.append(
                f"<tr><td><b>{escape(rep['name'])}</b></td><td>{escape(rep['location'])}</td>"
                f"<td><span class='badge {escape(rep['status'])}'>{escape(rep['status'])}</span>{trend}</td>"
                f"<td>{_age(rep['age_seconds'])}</td><td>{escape(rep['role'])}</td></tr>")
        parts.append("</table>")
    _timeline(doc["timeline"], parts)
    return "".join(parts)


def render_status_page(doc: dict, details: bool = True) -> str:
    """The page for a status document (dnsd.ops.status); with details=False, its public variant."""
    if not details:
        return render_public_page(health_only(doc))
    parts = _head()
    parts.append(f"<div class='meta'>config {escape(doc['config']['version'])} from "
                 f"{escape(doc['config']['source'])} · generation {doc['generation']}</div>")
    if "queries" in doc:
        parts.append(f"<div class='meta'>{queries_text(doc['queries'])}</div>")
    health = doc["health"]
    if health["expired"]:
        parts.append("<div class='banner bad'>Health expired: no probe verdict within the TTL — "
                     "every replica counts as online (fail open).</div>")
    for feed in health["feeds"]:
        if feed["error"]:
            parts.append(f"<div class='banner warn'>Health feed {escape(feed['url'])}: {escape(feed['error'])} "
                         f"(last good answer {_age(feed['age_seconds'])} ago)</div>")
    for registry in doc["registries"]:
        parts.append(f"<h2 id='{escape(registry['name'])}'>{escape(registry['name'])} "
                     f"<span class='meta'>· {escape(registry['routing'])} routing · all-down policy "
                     f"{escape(registry['all_down_policy'])}</span></h2>")
        if registry["all_down_active"]:
            parts.append(f"<div class='banner bad'>All replicas degraded: the all-down policy "
                         f"({escape(registry['all_down_policy'])}) decides the global answers.</div>")
        parts.append("<table><tr><th>replica</th><th>location</th><th>status</th><th>since</th>"
                     "<th>override</th><th>global</th><th>recent share of global answers</th></tr>")
        for rep in registry["replicas"]:
            override = rep["override"]
            override_html = "-"
            if override:
                override_html = (f"<span class='badge {escape(override['kind'])}'>{escape(override['kind'])}</span>"
                                 f"<div class='reason'>{escape(override['reason'] or '')} — {escape(override['actor'])}"
                                 "</div>")
            share = rep["recent_share"] * 100
            trend = f" ({escape(rep['trend'])})" if rep["trend"] else ""
            serving = global_role(rep)
            parts.append(
                f"<tr><td><b>{escape(rep['name'])}</b></td><td>{escape(rep['location'])}</td>"
                f"<td><span class='badge {escape(rep['status'])}'>{escape(rep['status'])}</span>{trend}"
                f"<div class='reason'>{escape(rep['reason'])}</div></td>"
                f"<td>{_age(rep['age_seconds'])}</td><td>{override_html}</td><td>{serving}</td>"
                f"<td><span class='bar'><span style='width:{share:.0f}%'></span></span> {share:.0f}%</td></tr>")
        parts.append("</table>")
    if "forwarding" in doc:
        _forwarding(doc["forwarding"], parts)
    _timeline(doc["timeline"], parts)
    return "".join(parts)


def forwarding_summary(forwarding: dict) -> str:
    """One line on the forwarder: what it answered and from where (the page's and `dnsd status`'s)."""
    cache = forwarding["cache"]
    stale = f", serve-stale {forwarding['cache']['serve_stale_seconds']:g}s" if cache["serve_stale_seconds"] else ""
    return (f"{forwarding['queries']} forwarded queries: {forwarding['cache_hits']} from the cache, "
            f"{forwarding['cache_misses']} upstream, {forwarding['stale_served']} stale, {forwarding['servfail']} "
            f"SERVFAIL; cache {cache['entries']} of {cache['max_entries']} entries{stale}; clients "
            f"{', '.join(forwarding['clients'])}; {forwarding['refused_clients']} refused")


def _forwarding(forwarding: dict, parts: list[str]) -> None:
    parts.append("<h2 id='forwarding'>Forwarding <span class='meta'>· names outside the zone</span></h2>")
    parts.append(f"<div class='meta'>{escape(forwarding_summary(forwarding))}</div>")
    parts.append("<table><tr><th>upstream (tried in this order)</th><th>smoothed RTT</th><th>queries</th>"
                 "<th>answers</th><th>errors</th></tr>")
    for up in forwarding["upstreams"]:
        errors = ", ".join(f"{kind} {n}" for kind, n in up["errors"].items()) or "-"
        parts.append(f"<tr><td><b>{escape(up['address'])}</b></td><td>{up['srtt_ms']:g} ms</td>"
                     f"<td>{up['queries']}</td><td>{up['answers']}</td><td>{escape(errors)}</td></tr>")
    parts.append("</table>")
