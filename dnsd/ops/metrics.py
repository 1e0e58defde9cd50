"""dnsd's Prometheus metrics, collected at scrape time from the running state, so the query path
only bumps plain counters and never calls into the metrics library. Two views: everything (with the
admin token) and the public one, health only (PUBLIC_FAMILIES; a new family is private until
listed there)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from dnsd.routing.health import Status
from dnsd.serving.stats import LATENCY_BOUNDS, qtype_label
from dnsd.serving.workerstats import Totals
from dnsd.answers.answer import RCODE_NAMES
from dnsd.protocol.rrl import CLASS_NAMES
from dnsd.forward.upstreams import ERROR_KINDS, LATENCY_BUCKETS

if TYPE_CHECKING:
    from dnsd.serving.service import Dnsd

STATUS_VALUE = {Status.ONLINE: 1.0, Status.CHECKING: 0.5, Status.DEGRADED: 0.0}
# health only: replica status and role in the global name (an override's kind says why a healthy
# replica is out; its actor and reason are never labels), expiry, all-down. No query counts or
# latency, no feed URLs, no config path.
PUBLIC_FAMILIES = frozenset({"geotm_replica_status", "geotm_replica_serving", "geotm_overrides_active",
                             "geotm_all_down_active", "geotm_all_down_activations", "geotm_health_expired",
                             "geotm_short_ttl_active"})


class DnsdCollector(Collector):
    def __init__(self, dnsd: Dnsd, public: bool = False):
        self.dnsd = dnsd
        self.public = public

    def collect(self) -> Iterator[Metric]:
        for family in self._families():
            if not self.public or family.name in PUBLIC_FAMILIES:
                yield family

    def _families(self) -> Iterator[Metric]:
        dnsd = self.dnsd
        snapshot = dnsd.engine.snapshot
        config = snapshot.config

        activations = CounterMetricFamily("geotm_all_down_activations", "Times a registry's all-down policy "
                                          "took over", labels=["registry"])
        for registry, count in sorted(dnsd.all_down_activations.items()):
            activations.add_metric([registry], count)
        yield activations

        feed = dnsd.feed
        expired = GaugeMetricFamily("geotm_health_expired", "1 while every probe verdict is older than the "
                                    "health TTL and dnsd fails open")
        expired.add_metric([], 1.0 if feed is not None and feed.expired else 0.0)
        yield expired
        if feed is not None:
            now = time.time()
            age = GaugeMetricFamily("geotm_health_feed_age_seconds", "Seconds since the feed last answered",
                                    labels=["feed"])
            errors = CounterMetricFamily("geotm_health_feed_errors", "Failed polls of the feed", labels=["feed"])
            for state in feed.feeds:
                age.add_metric([state.url], now - state.fetched_at if state.fetched_at else float("inf"))
                errors.add_metric([state.url], feed.errors_by_url.get(state.url, 0))
            yield age
            yield errors

        totals = dnsd.query_totals()  # under --workers: every worker's, added up
        queries = CounterMetricFamily("geotm_queries", "DNS queries answered, by name kind, qtype, rcode, view "
                                      "and the replica the global name chose", labels=["kind", "qtype", "rcode",
                                                                                       "view", "registry", "replica"])
        for (view, kind, qtype, rcode, registry, replica), count in sorted(totals.counts.items()):
            queries.add_metric([kind, qtype_label(qtype), RCODE_NAMES.get(rcode, str(rcode)), view or "-",
                                registry, replica], count)
        yield queries
        dropped = CounterMetricFamily("geotm_queries_dropped", "Packets not answered (responses, runts)")
        dropped.add_metric([], totals.dropped)
        yield dropped
        yield from _tcp_metrics(dnsd, totals)
        yield from _rrl_metrics(dnsd, totals)
        yield from _forward_metrics(dnsd, totals)
        yield from _geoip_metrics(dnsd, totals)
        buckets, cumulative = [], 0
        for bound, count in zip(LATENCY_BOUNDS + (float("inf"),), totals.latency_counts):
            cumulative += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
        latency = HistogramMetricFamily("geotm_answer_seconds", "Time from receiving a query to its reply "
                                        "being ready (inside dnsd, socket time excluded)")
        latency.add_metric([], buckets, totals.latency_sum)
        yield latency

        overrides = GaugeMetricFamily("geotm_overrides_active", "Operator overrides in force",
                                      labels=["registry", "replica", "kind"])
        for override in snapshot.overrides.values():
            overrides.add_metric([override.registry, override.replica, override.kind], 1.0)
        yield overrides
        reloads = CounterMetricFamily("geotm_config_reloads", "Config reloads, by result", labels=["result"])
        for result, count in sorted(dnsd.reloads.items()):
            reloads.add_metric([result], count)
        yield reloads

        info = GaugeMetricFamily("geotm_config_info", "The running config", labels=["version", "source"])
        info.add_metric([config.digest[:12], config.source], 1.0)
        yield info
        generation = GaugeMetricFamily("geotm_snapshot_generation", "Serving-state swaps since start")
        generation.add_metric([], snapshot.generation)
        yield generation
        if dnsd.cluster is not None:
            yield from _cluster_metrics(dnsd)


def _cluster_metrics(dnsd: Dnsd) -> Iterator[Metric]:
    """With a cluster section: whether etcd is reachable (0: the last known state serves, changes refused)."""
    connected = GaugeMetricFamily("geotm_cluster_connected", "1 while the cluster's etcd is reachable with a "
                                  "leader; 0: serving the last known overrides, override changes refused")
    connected.add_metric([], 1.0 if dnsd.cluster.connected else 0.0)
    yield connected


def _tcp_metrics(dnsd: Dnsd, totals: Totals) -> Iterator[Metric]:
    """The DNS listeners' TCP admission: open connections and sources, the cap (this process's), refusals,
    evictions (every worker's)."""
    admission = dnsd.tcp_admission()
    if admission is None:
        return
    tcp, limit = admission
    for name, help_text, value in (
            ("geotm_tcp_connections", "Open DNS-over-TCP connections", tcp.open),
            ("geotm_tcp_sources", "Sources (address or prefix) holding DNS-over-TCP connections", tcp.sources),
            ("geotm_tcp_connection_limit", "The TCP connection cap in force (server.tcp_max_connections, "
                                           "lowered to what the open-files limit allows)", limit),
            ("geotm_tcp_under_load", "1 while connections are at 3/4 of the cap or more and the short idle "
                                     "timeout applies", 1.0 if tcp.under_load else 0.0)):
        gauge = GaugeMetricFamily(name, help_text)
        gauge.add_metric([], value)
        yield gauge
    refused = CounterMetricFamily("geotm_tcp_connections_refused", "TCP connections closed right after accept",
                                  labels=["reason"])
    counted = totals.tcp
    refused.add_metric(["per_source_limit"], counted.get("refused_per_source", 0))
    refused.add_metric(["connection_limit"], counted.get("refused_full", 0))
    yield refused
    for name, help_text, value in (
            ("geotm_tcp_connections_accepted", "TCP connections given a slot", counted.get("accepted", 0)),
            ("geotm_tcp_connections_evicted", "Longest-idle TCP connections closed to make room for a new one",
             counted.get("evicted", 0)),
            ("geotm_tcp_connections_closed_under_load", "TCP connections closed after the short idle timeout "
                                                        "near the cap", counted.get("closed_under_load", 0)),
            ("geotm_tcp_accept_paused", "Times accept() failed for want of file descriptors",
             counted.get("accept_paused", 0))):
        counter = CounterMetricFamily(name, help_text)
        counter.add_metric([], value)
        yield counter


def _rrl_metrics(dnsd: Dnsd, totals: Totals) -> Iterator[Metric]:
    """Response rate limiting of UDP answers (counters: every worker's; the table: this process's);
    zeros when server.rate_limit is off."""
    rrl = dnsd.rrl
    dropped = CounterMetricFamily("geotm_rrl_dropped", "UDP answers not sent by response rate limiting, "
                                  "by response class", labels=["response_class"])
    slipped = CounterMetricFamily("geotm_rrl_slipped", "UDP answers sent as an empty TC=1 reply by response "
                                  "rate limiting (the client may retry over TCP), by response class",
                                  labels=["response_class"])
    counted = totals.rrl
    for index, name in enumerate(CLASS_NAMES):
        dropped.add_metric([name], _at(counted.get("dropped"), index))
        slipped.add_metric([name], _at(counted.get("slipped"), index))
    episodes = CounterMetricFamily("geotm_rrl_limited_prefixes", "Times a client prefix started being rate "
                                   "limited (one rate_limited log event each)")
    episodes.add_metric([], _at(counted.get("limited_prefixes"), 0))
    table = GaugeMetricFamily("geotm_rrl_table_entries", "Rate-limit buckets held (at most table_size)")
    table.add_metric([], len(rrl.buckets) if rrl else 0)
    yield from (dropped, slipped, episodes, table)


# ForwardStats attribute -> (metric name, help); counted since the forwarder was built (a reload that
# changes the forward section builds a new one: the counters start again, as after a restart)
FORWARD_COUNTERS = (
    ("queries", "geotm_forward_queries", "Queries for names outside the zone handed to the forwarder"),
    ("cache_hits", "geotm_forward_cache_hits", "Forwarded queries answered from the cache"),
    ("cache_misses", "geotm_forward_cache_misses", "Forwarded queries the cache could not answer"),
    ("coalesced", "geotm_forward_coalesced", "Cache misses that joined a lookup already under way"),
    ("lookups", "geotm_forward_lookups", "Lookups started upstream (one per missed question)"),
    ("stale_served", "geotm_forward_stale_served", "Expired answers served because every upstream failed"),
    ("servfail", "geotm_forward_servfail", "SERVFAIL sent: no upstream answered and nothing stale stood in"),
    ("overloaded", "geotm_forward_overloaded", "Misses refused a lookup: max_in_flight lookups under way"),
    ("stripped", "geotm_forward_stripped_records", "Upstream records dropped because their owner is in our zone"),
    ("errors", "geotm_forward_bugs", "Forwarding bugs caught (each answered SERVFAIL)"),
)


def _forward_metrics(dnsd: Dnsd, totals: Totals) -> Iterator[Metric]:
    """The forwarder of names outside the zone: nothing while forwarding is off. Its counters are every
    worker's; the cache, lookups under way and the upstreams' figures this process's."""
    forwarder = dnsd.forwarder
    if forwarder is None:
        return
    counted = totals.forward
    for attribute, name, help_text in FORWARD_COUNTERS:
        counter = CounterMetricFamily(name, help_text)
        counter.add_metric([], counted.get(attribute, 0))
        yield counter
    refused = CounterMetricFamily("geotm_forward_refused", "Queries the forwarder refused, by reason (client: "
                                  "not in forward.clients)", labels=["reason"])
    for reason, value in (("client", counted.get("refused_client", 0)),
                          ("in_zone", counted.get("refused_in_zone", 0)), ("other", counted.get("refused_other", 0))):
        refused.add_metric([reason], value)
    yield refused
    waiting = CounterMetricFamily("geotm_forward_waiting_overloaded", "Forwarded queries answered SERVFAIL at "
                                  "once: too many clients already waiting for upstreams")
    waiting.add_metric([], totals.forward_overloaded)
    yield waiting
    for name, help_text, value in (
            ("geotm_forward_cache_entries", "Answers in the forwarding cache", len(forwarder.cache)),
            ("geotm_forward_cache_bytes", "Bytes the forwarding cache holds (bounded by cache.max_bytes)",
             forwarder.cache.bytes),
            ("geotm_forward_in_flight", "Lookups under way upstream now", forwarder.in_flight),
            ("geotm_forward_waiting", "Forwarded queries waiting for an upstream now", dnsd.engine.forward_pending)):
        gauge = GaugeMetricFamily(name, help_text)
        gauge.add_metric([], value)
        yield gauge
    evicted = CounterMetricFamily("geotm_forward_cache_evicted", "Entries pushed out of the forwarding cache by "
                                  "its bounds before they expired")
    evicted.add_metric([], forwarder.cache.evicted)
    yield evicted

    upstreams = forwarder.upstreams.all
    queries = CounterMetricFamily("geotm_forward_upstream_queries", "Queries sent to the upstream, UDP and TCP",
                                  labels=["upstream"])
    answers = CounterMetricFamily("geotm_forward_upstream_answers", "Usable replies (NOERROR, NXDOMAIN) from the "
                                  "upstream", labels=["upstream"])
    errors = CounterMetricFamily("geotm_forward_upstream_errors", "Failed or ignored exchanges with the upstream, "
                                 "by kind (truncated: retried over TCP; mismatched: forged or stray, ignored)",
                                 labels=["upstream", "kind"])
    srtt = GaugeMetricFamily("geotm_forward_upstream_srtt_seconds", "Smoothed round-trip time: the lowest is "
                             "asked first", labels=["upstream"])
    latency = HistogramMetricFamily("geotm_forward_upstream_seconds", "Time from sending a query to a usable "
                                    "reply (the TCP retry included)", labels=["upstream"])
    for upstream in upstreams:
        address, up = upstream.address, upstream.stats
        queries.add_metric([address], up.queries)
        answers.add_metric([address], up.answers)
        for kind in ERROR_KINDS:
            errors.add_metric([address, kind], up.errors[kind])
        srtt.add_metric([address], upstream.srtt)
        buckets, cumulative = [], 0
        for bound, count in zip(LATENCY_BUCKETS + (float("inf"),), up.latency_buckets):
            cumulative += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
        latency.add_metric([address], buckets, up.latency_sum)
    yield from (queries, answers, errors, srtt, latency)
def _geoip_metrics(dnsd: Dnsd, totals: Totals) -> Iterator[Metric]:
    """Where performance routing placed clients, and by what; the GeoIP database in use (when any)."""
    located = CounterMetricFamily("geotm_client_region_answers", "Answers whose replica performance routing "
                                  "chose by the client's region: that region, and the source that placed the "
                                  "client there (networks: clients.networks; database: the GeoIP database; "
                                  "default: default_region)", labels=["region", "source"])
    for (region, source), count in sorted(totals.located.items()):
        located.add_metric([region or "-", source], count)
    yield located
    geo = dnsd.engine.snapshot.compiled.geo
    if geo is None:
        return
    stats = geo.stats
    for name, help_text, value in (
            ("geotm_geoip_database_build_timestamp_seconds", "When the GeoIP database in use was built (its "
                                                             "metadata): alert when it grows old", stats.build_epoch),
            ("geotm_geoip_networks", "Networks with a record in the GeoIP database in use", stats.networks),
            ("geotm_geoip_ranges", "Address ranges the GeoIP database compiled to (adjacent networks of one "
                                   "region merged)", stats.ranges_v4 + stats.ranges_v6),
            ("geotm_geoip_table_bytes", "Memory of the compiled GeoIP table", stats.table_bytes),
            ("geotm_geoip_compile_seconds", "Time the GeoIP database in use took to read and compile",
             stats.compile_seconds)):
        gauge = GaugeMetricFamily(name, help_text)
        gauge.add_metric([], value)
        yield gauge


def _at(values: list[int] | None, index: int) -> int:
    return values[index] if values and index < len(values) else 0


# The families with a sample per registry or replica, written as text by PerRegistryText (name, help,
# labels); all of them public.
PER_REGISTRY_FAMILIES = (
    ("geotm_replica_status", "Replica health as dnsd applies it: 1 online, 0.5 checking, 0 degraded"),
    ("geotm_replica_serving", "1 when the global name may route to the replica"),
    ("geotm_all_down_active", "1 while the registry's all-down policy decides its global answers"),
    ("geotm_short_ttl_active", "1 while the traffic-manager TTL is shortened because a replica is suspect or "
                               "recovering"),
)


class PerRegistryText:
    """The per-registry families in the exposition format, each registry's lines kept while what they
    show is unchanged: with 1,000 registries, formatting them through prometheus-client took ~50 ms
    of the event loop per scrape (answering stalls meanwhile); now a scrape formats only the
    registries whose health or routing changed since the last one."""

    def __init__(self, dnsd: Dnsd) -> None:
        self.dnsd = dnsd
        self._kept: dict[str, tuple[object, tuple[str, ...]]] = {}  # registry -> (what it showed, its lines)

    def text(self) -> str:
        snapshot = self.dnsd.engine.snapshot
        health = snapshot.health
        kept, fresh = self._kept, {}
        families: tuple[list[str], ...] = tuple([] for _ in PER_REGISTRY_FAMILIES)
        for plan in snapshot.plans:
            reg = plan.registry
            shown = (reg, tuple(health.of(reg.name, rep.name).status for rep in reg.replicas), plan.serving,
                     plan.all_down, plan.short_ttl)
            previous = kept.get(reg.name)
            lines = previous[1] if previous is not None and previous[0] == shown else _registry_lines(shown)
            fresh[reg.name] = (shown, lines)
            for family, part in zip(families, lines):
                family.append(part)
        self._kept = fresh
        return "".join(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n" + "".join(family)
                       for (name, help_text), family in zip(PER_REGISTRY_FAMILIES, families))


def _registry_lines(shown: tuple) -> tuple[str, ...]:
    """One registry's samples of each PER_REGISTRY_FAMILIES family (labels by name, as prometheus-client
    writes them)."""
    reg, statuses, serving, all_down, short_ttl = shown
    name = _label(reg.name)
    status = "".join(f'geotm_replica_status{{registry="{name}",replica="{_label(rep.name)}"}} '
                     f"{floatToGoString(STATUS_VALUE[state])}\n" for rep, state in zip(reg.replicas, statuses))
    routed = "".join(f'geotm_replica_serving{{registry="{name}",replica="{_label(rep.name)}"}} '
                     f"{floatToGoString(1.0 if index in serving else 0.0)}\n" for index, rep in enumerate(reg.replicas))
    down = (f'geotm_all_down_active{{policy="{_label(reg.all_down.mode)}",registry="{name}"}} '
            f"{floatToGoString(1.0 if all_down else 0.0)}\n")
    short = f'geotm_short_ttl_active{{registry="{name}"}} {floatToGoString(1.0 if short_ttl else 0.0)}\n'
    return status, routed, down, short


def _label(value: str) -> str:
    """A label value escaped as the text exposition format wants (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsView:
    """What a scrape returns: prometheus-client's families (all, or the public ones) and ours."""

    def __init__(self, dnsd: Dnsd, public: bool) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(DnsdCollector(dnsd, public))
        self.per_registry = PerRegistryText(dnsd)


def make_registry(dnsd: Dnsd, public: bool = False) -> MetricsView:
    return MetricsView(dnsd, public)


def render(view: MetricsView) -> bytes:
    return generate_latest(view.registry) + view.per_registry.text().encode()
