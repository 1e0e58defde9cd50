"""The serving state (config, health, compiled tables, routing plans) as one snapshot swapped whole,
and the per-query path that answers from it (and hands names outside the zone to the forwarder)."""
from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from time import perf_counter
from collections.abc import Callable, Mapping
from typing import NamedTuple

import structlog

from dnsd.answers import answer as rc
from dnsd import records
from dnsd.protocol import wire
from dnsd.routing import policy
from dnsd.routing.health import HealthSnapshot
from dnsd.common.logs import RateLimitedLog
from dnsd.model import Config
from dnsd.routing.netmatch import address_key
from dnsd.routing.overrides import NO_OVERRIDES, Overrides
from dnsd.routing.policy import RoutingPlan
from dnsd.routing.geoip import GeoTable
from dnsd.answers.resolve import resolve
from dnsd.serving.stats import QueryStats
from dnsd.answers.tables import CompiledZone, compile_config
from dnsd.answers.encode import encode_answer
from dnsd.forward import Forwarder
from dnsd.forward.message import error_reply
from dnsd.protocol.wire import WireError

log = structlog.get_logger(__name__)

ZONE_TRANSFER_QTYPES = (251, 252)  # IXFR, AXFR: not offered


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: Config
    compiled: CompiledZone
    health: HealthSnapshot
    plans: tuple[RoutingPlan, ...]  # per registry index
    generation: int
    overrides: Overrides = field(default_factory=lambda: NO_OVERRIDES)


def build_plans(config: Config, health: HealthSnapshot, overrides: Overrides = NO_OVERRIDES
                ) -> tuple[RoutingPlan, ...]:
    return tuple(policy.plan(reg, config.topology, health, overrides) for reg in config.registries)


def replan(old: Snapshot, health: HealthSnapshot, overrides: Overrides) -> tuple[RoutingPlan, ...]:
    """The plans under new health or overrides, same config. A plan depends on nothing but its
    registry's replicas' health and overrides (and the config), so a registry whose inputs are
    unchanged keeps its plan: a verdict about one replica rebuilds one plan, not all of them."""
    config = old.config
    changed = _changed_registries(old.health.endpoints, health.endpoints) if health is not old.health else set()
    if overrides is not old.overrides:
        changed |= _changed_registries(old.overrides, overrides)
    return tuple(policy.plan(registry, config.topology, health, overrides) if registry.name in changed else previous
                 for registry, previous in zip(config.registries, old.plans))


def _changed_registries(before: Mapping[tuple[str, str], object], after: Mapping[tuple[str, str], object]) -> set[str]:
    """Registries with an entry (registry, replica) -> value added, removed or changed."""
    get = before.get
    return ({key[0] for key, value in after.items() if (was := get(key)) is not value and was != value}
            | {key[0] for key in before if key not in after})


def new_snapshot(config: Config, health: HealthSnapshot | None = None, generation: int = 1,
                 compiled: CompiledZone | None = None, overrides: Overrides = NO_OVERRIDES,
                 geo: GeoTable | None = None) -> Snapshot:
    """geo: the GeoIP table to keep (a reload whose database did not change); else compile_config reads
    the database (geoip.GeoIPError when it cannot be used)."""
    health = health or HealthSnapshot()
    compiled = compiled or compile_config(config, geo)
    return Snapshot(config, compiled, health, build_plans(config, health, overrides), generation, overrides)


class ClientContext(NamedTuple):  # a tuple: built once per query, a frozen dataclass costs 3x more
    """Who is asking. Routing sees `bits/address/source_prefix`: the ECS subnet when the query has
    one (from anyone: it only steers between public replicas), else the source address. The view is
    chosen by the packet's source address (`source_bits/source_address`), see view_choice."""

    bits: int  # 32 or 128
    address: int
    source_prefix: int | None  # ECS source prefix; None when the source address is used
    source_bits: int  # the packet's source address, which ECS never replaces for the view
    source_address: int

    @classmethod
    def of(cls, client_ip: str, query: wire.Query | None = None) -> ClientContext:
        bits, address = _source_key(client_ip)
        ecs = query.edns.ecs if query is not None and query.edns is not None else None
        if ecs is not None:
            return _new_tuple(cls, (32 if ecs.family == 1 else 128, int(ecs.address), ecs.source_prefix, bits, address))
        return _new_tuple(cls, (bits, address, None, bits, address))


_new_tuple = tuple.__new__  # skips NamedTuple's keyword-handling __new__ on the hot path
# source addresses repeat (a few resolvers ask most queries): parse each once
_source_key = functools.lru_cache(maxsize=8192)(address_key)


def view_choice(compiled: CompiledZone, client: ClientContext) -> tuple[int, bool]:
    """(view index, whether ECS chose it). The view is the one holding the packet's source address
    (0: public). Only a query with ECS (source prefix > 0) from a resolver some view lists in
    trusted_resolvers is placed by its ECS subnet instead: into the view holding that subnet when
    that view trusts this resolver, else public. So a forged ECS from anyone else never reaches a
    VNet's private addresses."""
    prefix = client.source_prefix
    if prefix:  # the trusted-resolver lookup costs only queries that carry ECS
        trusting = compiled.trusted_matcher.lookup(client.source_bits, client.source_address)
        if trusting is not None:
            view = compiled.view_matcher.lookup(client.bits, client.address, prefix)
            return (view if view in trusting else 0), True
    view = compiled.view_matcher.lookup(client.source_bits, client.source_address)
    return (0 if view is None else view), False


def network_of(compiled: CompiledZone, client: ClientContext) -> int:
    """The client's network index: a client network written by hand, else (with clients.geoip) its
    GeoIP region's, compiled.default_network + 1 + region, else compiled.default_network."""
    geo = compiled.geo
    if geo is not None:  # hand-written networks and the database in one map: one lookup
        index = geo.lookup(client.bits, client.address, client.source_prefix)
        if index is not None:
            return index  # else an ECS subnet across ranges: the hand-written networks alone decide
    index = compiled.network_matcher.lookup(client.bits, client.address, client.source_prefix)
    return compiled.default_network if index is None else index


def choose(snapshot: Snapshot, client: ClientContext, registry_index: int) -> tuple[int | None, str]:
    """The replica (index) the client's global name goes to, and why."""
    plan = snapshot.plans[registry_index]
    network = network_of(snapshot.compiled, client)
    slot = policy.weighted_slot(client.bits, client.address, client.source_prefix)
    return plan.choice(network, snapshot.compiled.network_regions[network], slot), plan.reason


PACKET_CACHE_SIZE = 50_000  # replies remembered per snapshot; cleared whole when full
CLIENT_CLASSES_SIZE = 65_536  # source addresses classified per snapshot; cleared whole when full
_UNCLASSIFIED = object()


class ClientClass(NamedTuple):
    """What of a source address an answer can depend on; indexed by a ROUTED_BY_* value."""

    alike: tuple  # (view of the source, views trusting its ECS, may recurse): every answer depends on these
    network: int  # the client network its source address is in
    slot: int  # its weighted-routing slot
    both: tuple[int, int]


# what an answer took from the client's place (the ClientClass field that must match for a shared hit)
ROUTED_BY_NOTHING, ROUTED_BY_NETWORK, ROUTED_BY_SLOT, ROUTED_BY_BOTH = 0, 1, 2, 3
# Forwarded queries waiting for an upstream at once. The forwarder bounds distinct lookups
# (max_in_flight); this bounds the clients waiting on them (each a task until the deadline), so a
# flood of one uncached name cannot grow memory without end. Beyond it: SERVFAIL at once.
MAX_PENDING_FORWARDS = 10_000
FORWARDED = "forwarded"  # the kind label of forwarded queries in the query counts
RA = 0x80  # Recursion Available, in the fourth header byte


class _Forward:
    """What answer() returns for a name the forwarder answers (handle() hands it over)."""


FORWARD = _Forward()


class QueryEngine:
    """Answers one DNS message from the current snapshot. Never raises: bad input gets FORMERR or
    silence, and the engine keeps answering.

    Packet cache: under one snapshot a reply is fully determined by the query's bytes after its ID,
    the client's address and the transport, so a repeated query (the common case: a few resolvers
    asking the same names) is answered by patching the ID into the reply sent before. The cache
    belongs to the snapshot: every swap starts it empty. The batched UDP listener reads `cache` (the
    attribute, again every batch) and answers UDP hits itself with the same bytes and counters
    (dnsd.protocol.listening.PacketCacheOwner: the key and entry shapes below are that contract).

    Shared cache, behind it: the client's address matters only through its class (ClientClass: the
    view and trusting views of its source, whether it may recurse, and its network and weighted slot
    when routing placed it by its source address), so a reply is also kept under (query bytes after
    the ID, transport, class without routing); when the answer depended on the routing place, that
    key holds which part (ROUTED_BY_*) and the reply is kept under the key plus that part. A question
    a thousand resolvers ask is then built once per view and routing place, not once per resolver.

    Forwarding (when `forwarder` is set, from the config's forward section): a name outside the zone
    from a client the forwarder allows goes to it instead of being REFUSED. Its replies never enter
    the packet cache (the forwarder's cache counts TTLs down and expires entries); a cache hit is kept
    in `forward_hits` under the same key and served again, unparsed, while Forwarder.repeat_hit says
    the forwarder would build the same bytes (its entry unchanged, the same second); a miss returns an
    asyncio Task the listeners wait on (dnsd.protocol.listening's handler contract)."""

    def __init__(self, snapshot: Snapshot, forwarder: Forwarder | None = None):
        self.snapshot = snapshot
        self.forwarder = forwarder  # set with the snapshot it belongs to (swap), or None: forwarding off
        self.forward_pending = 0  # forwarded queries waiting for an upstream now
        self.stats = QueryStats()
        self.cache: dict[tuple[bytes, str, bool], tuple[bytes, tuple, tuple | None]] = {}
        self.shared: dict[tuple, tuple[bytes, tuple, tuple | None] | int] = {}  # see the class docstring
        self.client_classes: dict[str, ClientClass | None] = {}  # per source address, for this snapshot
        self.route_dependence = ROUTED_BY_NOTHING  # what the last answer() took from the client's place
        # frees full caches later (the service's slice-wise release), or None: cleared at once
        self.release: Callable[[list[dict]], None] | None = None
        # forwarded cache hits by the same key: valid while the forwarder's entry is and for the same
        # second of its age (TTLs count down per second), checked by Forwarder.repeat_hit
        self.forward_hits: dict[tuple[bytes, str, bool], tuple[bytes, tuple, tuple]] = {}
        # per-query events, rate limited (a flood of bad queries must not fill the disk); the
        # metrics count every query exactly, these only show examples
        self.failed_log = RateLimitedLog("query_failed", level="error", logger=log)
        self.refused_log = RateLimitedLog("query_refused", level="info", logger=log)
        self.malformed_log = RateLimitedLog("query_malformed", level="info", logger=log)

    def flush_logs(self, force: bool = False) -> None:
        """Emit the due summaries of suppressed per-query events (each second, and at shutdown)."""
        for limiter in (self.failed_log, self.refused_log, self.malformed_log):
            limiter.flush(force)

    def swap(self, snapshot: Snapshot) -> list[dict]:
        """The new snapshot, with empty caches; returns the old caches (a full one takes ~15 ms to
        free: the caller may free them in slices)."""
        # handle() runs to completion on the event loop's thread and swaps happen between calls, so
        # a query sees the old snapshot (and its cache) or the new one, never a mix
        left = self._forget_replies()  # the new snapshot's zone may hold a name forwarded until now
        self.snapshot = snapshot
        return left

    def swap_forwarder(self, forwarder: Forwarder | None) -> None:
        """A new forwarder (or none): the packet cache goes too, its replies' RA bit came from the old."""
        self._forget_replies()
        self.forwarder = forwarder

    def _forget_replies(self) -> list[dict]:
        left = [self.cache, self.shared, self.client_classes, self.forward_hits]
        self.cache, self.shared, self.client_classes, self.forward_hits = {}, {}, {}, {}
        return left

    def handle(self, data: bytes, client_ip: str, over_tcp: bool) -> bytes | None | asyncio.Task[bytes]:
        started = perf_counter()
        key = (data[2:], client_ip, over_tcp)
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.count_cached(cached)
            self.stats.observe_latency(perf_counter() - started)
            return data[:2] + cached[0]
        if self.forward_hits:  # a forwarded question asked again: answered without parsing it
            hit = self.forward_hits.get(key)
            if hit is not None:
                if self.forwarder.repeat_hit(hit[2]):  # type: ignore[union-attr]  # set while hits are
                    counts = self.stats.counts
                    counts[hit[1]] = counts.get(hit[1], 0) + 1
                    self.stats.observe_latency(perf_counter() - started)
                    return data[:2] + hit[0]
                del self.forward_hits[key]
        klass = self.client_classes.get(client_ip, _UNCLASSIFIED)
        if klass is _UNCLASSIFIED:
            klass = self._classify(client_ip)
        if klass is not None:
            shared_key = (key[0], over_tcp, klass.alike)
            shared = self.shared.get(shared_key)
            if type(shared) is int:  # the answer depended on the client's routing place
                shared_key = (shared_key, klass[shared])
                shared = self.shared.get(shared_key)
            if shared is not None:
                self.stats.count_cached(shared)
                self._remember(key, shared)
                self.stats.observe_latency(perf_counter() - started)
                return data[:2] + shared[0]
        try:
            query = wire.parse_query(data)
        except WireError as err:
            reply = err.reply(self.snapshot.config.server.edns_udp_size)  # ours, as in every OPT we send
            if reply is None:
                self.stats.dropped += 1
            else:
                self.stats.count("", "malformed", 0, err.rcode)
            self.malformed_log(client=client_ip, error=str(err), rcode=err.rcode, answered=reply is not None)
            return reply
        self.stats.last_located = None
        self.route_dependence = ROUTED_BY_NOTHING
        try:
            reply = self.answer(query, client_ip, over_tcp)
            if reply is FORWARD:
                return self.forward(query, client_ip, over_tcp, started, key)
            forwarder = self.forwarder
            if forwarder is not None and forwarder.allows(client_ip):
                # RA describes the server for this client (RFC 1035 4.1.1): recursion is available to
                # it, for our own names too. Stubs ask with RD and expect RA from their resolver (dig
                # warns "recursion requested but not available"; some stubs skip such a server).
                # Clients outside forward.clients never get RA: for them we are authority only.
                reply = reply[:3] + bytes((reply[3] | RA,)) + reply[4:]
        except Exception:  # a bug must cost one answer, not the server
            self.failed_log(client=client_ip, qname=query.qname(), qtype=query.qtype, exc_info=True)
            self.stats.count("", "error", query.qtype, rc.SERVFAIL)
            reply = wire.error_response(query, rc.SERVFAIL, self.snapshot.config.server.edns_udp_size)
        else:
            entry = (reply[2:], self.stats.last_key, self.stats.last_located)
            self._remember(key, entry)
            if klass is not None:
                shared, alike = self.shared, (key[0], over_tcp, klass.alike)
                if len(shared) >= PACKET_CACHE_SIZE:
                    shared = self.shared = self._emptied(shared)
                depends = self.route_dependence
                if depends == ROUTED_BY_NOTHING:
                    shared[alike] = entry
                else:
                    shared[alike] = depends
                    shared[(alike, klass[depends])] = entry
        self.stats.observe_latency(perf_counter() - started)
        return reply

    def _remember(self, key: tuple[bytes, str, bool], entry: tuple[bytes, tuple, tuple | None]) -> None:
        cache = self.cache
        if len(cache) >= PACKET_CACHE_SIZE:
            cache = self.cache = self._emptied(cache)
        cache[key] = entry

    def _emptied(self, full: dict) -> dict:
        """A new dict for a full one, which goes to `release` (a 50,000-entry cache takes ~4 ms to free:
        in slices between queries, not in one stall) or, without one, is cleared now."""
        if self.release is not None:
            self.release([full])
        else:
            full.clear()
        return {}

    def _classify(self, client_ip: str) -> ClientClass | None:
        """What of this source address an answer can depend on (None: not an address; such a client
        is answered without the shared cache). Kept per address for the snapshot."""
        try:
            client = ClientContext.of(client_ip)
        except (OSError, ValueError, TypeError):
            klass = None
        else:
            compiled = self.snapshot.compiled
            forwarder = self.forwarder
            alike = (compiled.view_matcher.lookup(client.bits, client.address),
                     compiled.trusted_matcher.lookup(client.bits, client.address),
                     forwarder is not None and forwarder.allows(client_ip))
            network = network_of(compiled, client)
            slot = policy.weighted_slot(client.bits, client.address, None)
            klass = ClientClass(alike, network, slot, (network, slot))
        classes = self.client_classes
        if len(classes) >= CLIENT_CLASSES_SIZE:
            classes = self.client_classes = self._emptied(classes)
        classes[client_ip] = klass
        return klass

    def answer(self, query: wire.Query, client_ip: str, over_tcp: bool) -> bytes:
        edns = query.edns
        count = self.stats.count
        snapshot = self.snapshot  # read once: the whole answer comes from one snapshot
        udp_size = snapshot.config.server.edns_udp_size  # ours, advertised in every OPT we send
        if edns is not None and edns.version > 0:
            count("", "badvers", query.qtype, rc.BADVERS)
            return wire.error_response(query, rc.BADVERS, udp_size)  # RFC 6891 §6.1.3
        if query.qclass != records.CLASS_IN or query.qtype in ZONE_TRANSFER_QTYPES:
            count("", "refused", query.qtype, rc.REFUSED)
            self.refused_log(client=client_ip, qname=query.qname(), qtype=query.qtype, qclass=query.qclass,
                             reason="zone transfer" if query.qtype in ZONE_TRANSFER_QTYPES else "class")
            return wire.error_response(query, rc.REFUSED, udp_size)
        compiled = snapshot.compiled
        client = ClientContext.of(client_ip, query)
        view, view_by_ecs = view_choice(compiled, client)
        key = query.qname_key
        entry = compiled.exact[view].get((key, query.qtype)) or compiled.other[view].get(key)
        max_size = None if over_tcp else wire.udp_limit(query, udp_size)
        ecs_scope = None
        view_name = compiled.zd.views[view]
        if entry is None:
            if not compiled.in_zone(key):
                forwarder = self.forwarder
                if forwarder is not None and forwarder.allows(client_ip):
                    return FORWARD  # type: ignore[return-value]  # handle() hands it to the forwarder
                count(view_name, "refused", query.qtype, rc.REFUSED)
                self.refused_log(client=client_ip, qname=query.qname(), qtype=query.qtype, reason="not in zone")
                return wire.error_response(query, rc.REFUSED, udp_size)
            packed = compiled.nxdomain(len(key))
            count(view_name, "nxdomain", query.qtype, rc.NXDOMAIN)
        elif entry.packed is not None:
            packed = entry.packed
            count(view_name, entry.kind, query.qtype, packed.rcode)
        else:
            plan = snapshot.plans[entry.registry]
            if entry.slow:
                count(view_name, entry.kind, query.qtype, 0, plan.registry.name, "")
                return self.answer_slowly(query, snapshot, client, view, max_size, udp_size)
            network = network_of(compiled, client)
            if plan.by_region:  # performance routing placed the client: count where, and by what
                self.stats.locate(compiled.located[network])
            index = plan.choice(network, compiled.network_regions[network],
                                policy.weighted_slot(client.bits, client.address, client.source_prefix))
            if index is None:
                count(view_name, entry.kind, query.qtype, rc.SERVFAIL, plan.registry.name, "")
                return wire.error_response(query, rc.SERVFAIL, udp_size)
            packed = (entry.variants_short if plan.short_ttl else entry.variants)[index]
            count(view_name, entry.kind, query.qtype, packed.rcode, plan.registry.name,
                  plan.registry.replicas[index].name)
            if plan.depends_on_client:
                ecs_scope = client.source_prefix
                if ecs_scope is None:  # placed by its source address (with ECS the bytes say where)
                    self.route_dependence = ROUTED_BY_NETWORK if plan.by_region else ROUTED_BY_SLOT
        if edns is not None and edns.ecs is not None:
            if ecs_scope is None:  # a view chosen by source address does not vary with the ECS subnet
                ecs_scope = edns.ecs.source_prefix if packed.client_dependent and view_by_ecs else 0
        return wire.build_response(query, packed, max_udp_size=max_size, ecs_scope=ecs_scope, udp_size=udp_size)

    def forward(self, query: wire.Query, client_ip: str, over_tcp: bool, started: float,
                key: tuple[bytes, str, bool]) -> bytes | asyncio.Task[bytes]:
        """A name outside the zone from a client allowed to recurse: the forwarder's reply now (a cache
        hit), or a task that gives it once an upstream answered (counted then; the answer-latency
        histogram is for answers we have at hand, upstream latency has its own per upstream)."""
        forwarder = self.forwarder
        assert forwarder is not None
        max_size = None if over_tcp else wire.udp_limit(query, forwarder.edns_udp_size)
        reply = forwarder.answer_now(query, client_ip, max_size)
        if reply is None:
            if self.forward_pending >= MAX_PENDING_FORWARDS:
                reply = error_reply(query, rc.SERVFAIL, forwarder.edns_udp_size)
                self.stats.forward_overloaded += 1
            else:
                later = asyncio.get_running_loop().create_task(
                    self._forward_later(forwarder, query, client_ip, max_size))
                self.forward_pending += 1  # _forward_later takes it back when it ends
                return later
        self.stats.count("", FORWARDED, query.qtype, reply[3] & 0xF)
        if forwarder.last_hit is not None:
            hits = self.forward_hits
            if len(hits) >= PACKET_CACHE_SIZE:
                hits = self.forward_hits = self._emptied(hits)
            hits[key] = (reply[2:], self.stats.last_key, forwarder.last_hit)
        self.stats.observe_latency(perf_counter() - started)
        return reply

    async def _forward_later(self, forwarder: Forwarder, query: wire.Query, client_ip: str,
                             max_size: int | None) -> bytes:
        try:
            reply = await forwarder.answer_later(query, client_ip, max_size)
        finally:
            self.forward_pending -= 1
        self.stats.count("", FORWARDED, query.qtype, reply[3] & 0xF)
        return reply

    def answer_slowly(self, query: wire.Query, snapshot: Snapshot, client: ClientContext, view: int,
                      max_size: int | None, udp_size: int) -> bytes:
        if client.source_prefix is None:  # choose() may place it by network and by slot
            self.route_dependence = ROUTED_BY_BOTH
        result = resolve(snapshot.compiled.zd, view, query.qname(), query.qtype,
                         lambda registry_index: choose(snapshot, client, registry_index),
                         short_ttl={i for i, plan in enumerate(snapshot.plans) if plan.short_ttl})
        if result.rcode == rc.SERVFAIL:
            return wire.error_response(query, rc.SERVFAIL, udp_size)
        packed = encode_answer(result, len(query.qname_key), query.qname())
        scope = client.source_prefix if client.source_prefix is not None else None
        return wire.build_response(query, packed, max_udp_size=max_size, ecs_scope=scope, udp_size=udp_size)
