"""Forwarder: answers a parsed query for a name outside our zone from the cache or from the upstreams
(client ACL, in-zone refusal, coalescing, failover by SRTT, UDP then TCP, serve-stale), with counters
and describe() for explain. Never raises out of its entry points."""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from dnsd.answers.answer import FORMERR, NOERROR, NOTIMP, NXDOMAIN, REFUSED, SERVFAIL
from dnsd.common.logs import RateLimitedLog
from dnsd.forward import exchange
from dnsd.forward.cache import Cache, CacheKey, Entry, Lifetimes, make_entry
from dnsd.forward.message import (
    Cleaned,
    MalformedReply,
    clean_reply,
    client_reply,
    error_reply,
    is_truncated,
    name_to_wire,
    reply_matches,
    upstream_query,
    wire_to_text,
)
from dnsd.forward.upstreams import Upstream, Upstreams
from dnsd.model import ForwardSettings
from dnsd.protocol.wire import EDNS_UDP_SIZE, Query
from dnsd.routing.netmatch import PrefixMatcher, address_key

log = structlog.get_logger(__name__)

CLASS_IN = 1
NOT_FORWARDED_QTYPES = frozenset({251, 252})  # IXFR, AXFR: transfers are nobody's business here
_ERROR_KINDS = {SERVFAIL: "servfail", REFUSED: "refused", FORMERR: "formerr", NOTIMP: "notimp"}
# source addresses repeat (a few docker hosts ask most queries): parse each once
_client_key = functools.lru_cache(maxsize=8192)(address_key)
ALLOWED_MEMO_SIZE = 8192  # source addresses whose allows() answer is remembered


@dataclass(slots=True)
class ForwardStats:
    """Plain counters of the forwarder (the cache's entries and bytes are on Forwarder.cache)."""

    queries: int = 0  # client queries handed to the forwarder
    cache_hits: int = 0
    cache_misses: int = 0
    coalesced: int = 0  # misses that joined a lookup already under way instead of starting one
    lookups: int = 0  # lookups started upstream (one per missed key, however many clients wait)
    stale_served: int = 0
    servfail: int = 0  # SERVFAIL sent: no upstream helped and nothing stale could stand in
    overloaded: int = 0  # misses with max_in_flight lookups already under way
    refused_client: int = 0  # source address not in the settings' clients
    refused_in_zone: int = 0  # asked to forward a name of our own zone (a caller's bug)
    refused_other: int = 0  # a class other than IN, zone transfers
    stripped: int = 0  # upstream records dropped because their owner is in our zone
    errors: int = 0  # bugs caught at the entry points (each answered SERVFAIL)


@dataclass(frozen=True, slots=True)
class Description:
    """What explain shows for one question."""

    name: str
    qtype: int
    forwarded: bool  # False: the name is in our zone, geotm answers it itself
    upstreams: tuple[tuple[str, float], ...]  # (HOST:PORT, SRTT in ms), the first is tried first
    cached: bool
    ttl_left: int | None  # seconds the cached answer stays fresh
    stale: bool  # expired but still servable while every upstream fails
    negative: bool | None  # the cached answer is NXDOMAIN/NODATA
    rcode: int | None

    @property
    def first_upstream(self) -> str | None:
        return self.upstreams[0][0] if self.upstreams else None


class Forwarder:
    """Forwarding with a cache, for the settings' clients and names outside our zone.

    `in_zone(name)` gets a lower-cased wire name and says whether it is ours (CompiledZone.in_zone):
    such names are never forwarded, and upstream records owned by them are dropped. geotm does not
    validate DNSSEC: with DO the upstream's DNSSEC records are passed on untouched, CD goes upstream
    as the client sent it, and AD is never set in our replies.

    Entry points for the query path (all take a wire.Query from parse_query; max_udp_size is
    wire.udp_limit(query, ...) on UDP, None on TCP):
      answer_now(query, client_ip, max_udp_size)  -> reply bytes (refusal or fresh cache hit) or None
      await answer_later(query, client_ip, max_udp_size) -> reply bytes, asking upstream if need be
      await resolve(query, client_ip, max_udp_size) -> both in one
    """

    def __init__(self, settings: ForwardSettings, in_zone: Callable[[bytes], bool],
                 clock: Callable[[], float] = time.monotonic, edns_udp_size: int = EDNS_UDP_SIZE) -> None:
        self.settings = settings  # the config's forward section (dnsd.model), defaults and all
        self.edns_udp_size = edns_udp_size  # advertised upstream and to clients (server.edns_udp_size)
        self.in_zone = in_zone
        self.clock = clock
        self.upstreams = Upstreams(settings.upstreams)
        cache = settings.cache
        self.cache = Cache(cache.max_entries, cache.max_bytes, cache.serve_stale, clock)
        self._stale_answer_after = cache.stale_answer_after
        self.lifetimes = Lifetimes(cache.min_ttl, cache.max_ttl, cache.max_negative_ttl)
        self.allowed: PrefixMatcher[bool] = PrefixMatcher(
            (ipaddress.ip_network(network), True) for network in settings.clients)
        self.stats = ForwardStats()
        self.last_hit: tuple[Entry, int] | None = None  # set by answer_now after a cache hit
        # allows() per source address: a few docker hosts ask most queries; cleared when it gets big
        self._allowed: dict[str, bool] = {}
        self._lookups: dict[CacheKey, asyncio.Task[Entry | None]] = {}
        self.failed_log = RateLimitedLog("forward_failed", level="warning", logger=log)
        self.error_log = RateLimitedLog("forward_error", level="error", logger=log)

    @property
    def in_flight(self) -> int:
        """Lookups under way upstream (each asks one upstream at a time)."""
        return len(self._lookups)

    def allows(self, client_ip: str) -> bool:
        """Whether this source may have names outside our zone resolved (the settings' clients)."""
        allowed = self._allowed.get(client_ip)
        if allowed is None:
            try:
                bits, address = _client_key(client_ip)
            except (OSError, ValueError):
                return False
            allowed = bool(bits) and self.allowed.lookup(bits, address) is not None
            if len(self._allowed) >= ALLOWED_MEMO_SIZE:
                self._allowed.clear()
            self._allowed[client_ip] = allowed
        return allowed

    # -- entry points ----------------------------------------------------------------------------

    def answer_now(self, query: Query, client_ip: str, max_udp_size: int | None) -> bytes | None:
        """The reply when it needs no upstream: REFUSED (client not allowed, name in our zone, class
        not IN, zone transfer) or a fresh cache hit. None: call answer_later(). After a hit,
        `last_hit` is (its entry, its age in whole seconds), else None: see repeat_hit()."""
        self.last_hit = None
        try:
            self.stats.queries += 1
            refusal = self._refusal(query, client_ip)
            if refusal is not None:
                return refusal
            now = self.clock()
            entry = self.cache.fresh(_key(query), now)
            if entry is None:
                self.stats.cache_misses += 1
                return None
            self.stats.cache_hits += 1
            reply = self._reply(entry, query, max_udp_size, now=now)
            self.last_hit = (entry, int(now - entry.stored_at))
            return reply
        except Exception:
            return self._error(query)

    def repeat_hit(self, hit: tuple[Entry, int]) -> bool:
        """Whether a reply answer_now() built from `hit` (last_hit) is still the reply it would build:
        the entry still in the cache and fresh, at the same age in whole seconds (so the same TTLs).
        Counted as a hit when it is. The engine answers repeated questions with this, unparsed."""
        entry, age = hit
        now = self.clock()
        if (self.cache.entries.get(entry.key) is not entry or int(now - entry.stored_at) != age
                or entry.stored_at + entry.lifetime <= now):
            return False
        stats = self.stats
        stats.queries += 1
        stats.cache_hits += 1
        return True

    async def answer_later(self, query: Query, client_ip: str, max_udp_size: int | None) -> bytes:
        """The reply for a query answer_now() returned None for: joins the lookup of the same key under
        way or starts one; SERVFAIL (or a stale answer, when enabled) when every upstream fails; with a
        stale entry, its answer after cache.stale_answer_after while the lookup goes on (RFC 8767 §5). The
        refusals are checked again (a few dict lookups), so no caller can skip them."""
        try:
            refusal = self._refusal(query, client_ip)
            if refusal is not None:
                return refusal
            key = _key(query)
            entry = self.cache.fresh(key, self.clock())  # a lookup may have finished meanwhile
            if entry is None:
                lookup = self._lookups.get(key)
                if lookup is not None:
                    self.stats.coalesced += 1
                elif len(self._lookups) >= self.settings.max_in_flight:
                    self.stats.overloaded += 1
                    return self._failed(key, query, max_udp_size)
                else:
                    lookup = self._start_lookup(key, query)
                try:  # shielded: a client that stops waiting must not cancel the others' lookup
                    waited = self._stale_answer_after if self.cache.stale(key, self.clock()) else None
                    entry = await asyncio.wait_for(asyncio.shield(lookup), waited)
                except TimeoutError:  # a stale answer now; the lookup goes on and refreshes the cache
                    return self._failed(key, query, max_udp_size)
                except asyncio.CancelledError:
                    if not lookup.cancelled() or asyncio.current_task().cancelling():
                        raise  # this client was cancelled, not (only) the lookup
                    entry = None  # the lookup was cancelled by close()
                if entry is None:
                    return self._failed(key, query, max_udp_size)
            return self._reply(entry, query, max_udp_size)
        except Exception:
            return self._error(query)

    async def resolve(self, query: Query, client_ip: str, max_udp_size: int | None) -> bytes:
        reply = self.answer_now(query, client_ip, max_udp_size)
        if reply is None:
            reply = await self.answer_later(query, client_ip, max_udp_size)
        return reply

    # -- operations ------------------------------------------------------------------------------

    def describe(self, qname: str | bytes, qtype: int, dnssec_ok: bool = False,
                 checking_disabled: bool = False) -> Description:
        """For explain: whether the name would be forwarded, the upstreams in the order they would be
        tried, and what the cache holds for this question (nothing is changed). A text name with
        escapes or bad labels raises ValueError (pass the wire form from a parsed query instead)."""
        name_key = name_to_wire(qname) if isinstance(qname, str) else qname.lower()
        entry = self.cache.entries.get((name_key, qtype, CLASS_IN, dnssec_ok, checking_disabled))
        left = entry.left(self.clock()) if entry is not None else None
        return Description(
            name=wire_to_text(name_key), qtype=qtype, forwarded=not self.in_zone(name_key),
            upstreams=tuple((up.address, round(up.srtt * 1000, 3)) for up in self.upstreams.ranked()),
            cached=left is not None and left > 0,
            ttl_left=int(left) if left is not None and left > 0 else None,
            stale=left is not None and 0 >= left > -self.cache.stale_for,
            negative=entry.negative if entry is not None else None,
            rcode=entry.rcode if entry is not None else None)

    def flush(self, name: str | bytes) -> int:
        """Forget every cached answer for a name ('example.com' or its wire form), all types."""
        return self.cache.flush(name_to_wire(name) if isinstance(name, str) else name.lower())

    def flush_all(self) -> int:
        return self.cache.flush_all()

    def housekeeping(self, force: bool = False) -> None:
        """Each second or so: drop entries past their stale window, emit due log summaries."""
        self.cache.sweep(self.clock())
        self.failed_log.flush(force)
        self.error_log.flush(force)

    async def close(self) -> None:
        """Cancel the lookups under way and wait for them (their waiters get SERVFAIL)."""
        lookups = list(self._lookups.values())
        for lookup in lookups:
            lookup.cancel()
        if lookups:
            await asyncio.gather(*lookups, return_exceptions=True)

    # -- inside ----------------------------------------------------------------------------------

    def _refusal(self, query: Query, client_ip: str) -> bytes | None:
        if not self.allows(client_ip):
            self.stats.refused_client += 1
        elif self.in_zone(query.qname_key):
            self.stats.refused_in_zone += 1
        elif query.qclass != CLASS_IN or query.qtype in NOT_FORWARDED_QTYPES:
            self.stats.refused_other += 1
        else:
            return None
        return error_reply(query, REFUSED, self.edns_udp_size)

    def _reply(self, entry: Entry, query: Query, max_udp_size: int | None, stale: bool = False,
               now: float | None = None) -> bytes:
        if len(query.question) != entry.question_length:  # same key, so same name: never, unless a bug
            raise AssertionError("stored question length differs from the client's")
        records = entry.records_at(self.clock() if now is None else now, stale)
        return client_reply(query, entry.rcode, records, entry.ancount, entry.nscount, self.edns_udp_size,
                            max_udp_size)

    def _failed(self, key: CacheKey, query: Query, max_udp_size: int | None) -> bytes:
        entry = self.cache.stale(key, self.clock())
        if entry is not None:
            self.stats.stale_served += 1
            return self._reply(entry, query, max_udp_size, stale=True)
        self.stats.servfail += 1
        return error_reply(query, SERVFAIL, self.edns_udp_size)

    def _error(self, query: Query) -> bytes:
        self.stats.errors += 1
        self.error_log(qname=query.qname(), qtype=query.qtype, exc_info=True)
        return error_reply(query, SERVFAIL, self.edns_udp_size)

    def _start_lookup(self, key: CacheKey, query: Query) -> asyncio.Task[Entry | None]:
        lookup = asyncio.get_running_loop().create_task(self._lookup(key, query))
        self._lookups[key] = lookup

        def done(task: asyncio.Task) -> None:
            if self._lookups.get(key) is task:
                del self._lookups[key]

        lookup.add_done_callback(done)
        return lookup

    async def _lookup(self, key: CacheKey, query: Query) -> Entry | None:
        """Ask the upstreams by SRTT until one answers (NOERROR/NXDOMAIN), within the deadline. One
        that timed out is asked again in a later round while time is left (a lost datagram); one
        that failed otherwise is not. The entry is stored when it may be cached."""
        self.stats.lookups += 1
        failures: list[str] = []
        try:
            async with asyncio.timeout(self.settings.deadline):
                order = self.upstreams.for_query()
                while order:
                    timed_out = []
                    for upstream in order:
                        outcome, cleaned = await self._ask(upstream, query)
                        if cleaned is not None:
                            entry = make_entry(key, cleaned, self.lifetimes, self.clock())
                            self.cache.put(entry)
                            return entry
                        failures.append(f"{upstream.address} {outcome}")
                        if outcome == "timeout":
                            timed_out.append(upstream)
                    order = timed_out
        except TimeoutError:
            failures.append("deadline passed")
        except Exception:
            self.stats.errors += 1
            self.error_log(qname=query.qname(), qtype=query.qtype, exc_info=True)
            return None
        self.failed_log(qname=query.qname(), qtype=query.qtype,
                        failures=failures or ["no upstreams configured"])
        return None

    async def _ask(self, upstream: Upstream, query: Query) -> tuple[str, Cleaned | None]:
        """One try of one upstream: UDP, then TCP when the reply is truncated. -> (outcome, the
        cleaned reply when it answers the question)."""
        settings = self.settings
        stats = upstream.stats
        started = time.perf_counter()
        try:
            reply = await self._exchange(exchange.udp, upstream, query)
            rtt = time.perf_counter() - started
            if is_truncated(reply):
                stats.errors["truncated"] += 1
                reply = await self._exchange(exchange.tcp, upstream, query)
        except TimeoutError:
            stats.errors["timeout"] += 1
            self.upstreams.penalised(upstream, settings.try_timeout)
            return "timeout", None
        except OSError as exc:
            stats.errors["network"] += 1
            self.upstreams.penalised(upstream, settings.try_timeout)
            return f"network error ({exc.strerror or exc})", None
        try:
            cleaned = clean_reply(reply, query.qtype, self.in_zone)
        except MalformedReply as exc:
            stats.errors["malformed"] += 1
            self.upstreams.penalised(upstream, settings.try_timeout)
            return f"malformed reply ({exc})", None
        if cleaned.rcode in (NOERROR, NXDOMAIN):
            self.upstreams.measured(upstream, rtt)
            stats.answers += 1
            stats.observe_latency(time.perf_counter() - started)
            self.stats.stripped += cleaned.stripped
            return "answered", cleaned
        kind = _ERROR_KINDS.get(cleaned.rcode, "other_rcode")
        stats.errors[kind] += 1
        if cleaned.rcode == SERVFAIL:  # often about this name only (a broken zone): no penalty
            self.upstreams.measured(upstream, rtt)
        else:  # REFUSED, FORMERR, NOTIMP...: about every query we would send it
            self.upstreams.penalised(upstream, settings.try_timeout)
        return kind, None

    async def _exchange(self, transport, upstream: Upstream, query: Query) -> bytes:
        """One query with a fresh random ID (secrets: not guessable), bounded by try_timeout."""
        qid = secrets.randbits(16)
        qname_key, qtype, qclass = query.qname_key, query.qtype, query.qclass

        def accept(reply: bytes) -> bool:
            return reply_matches(reply, qid, qname_key, qtype, qclass)

        upstream.stats.queries += 1
        async with asyncio.timeout(self.settings.try_timeout):
            return await transport(upstream, upstream_query(qid, query, self.edns_udp_size), accept)


def _key(query: Query) -> CacheKey:
    edns = query.edns
    # CD is in the key: an answer fetched with checking disabled may be one a validating upstream
    # would refuse, and must not reach clients that rely on that validation
    return query.qname_key, query.qtype, query.qclass, edns is not None and edns.dnssec_ok, query.cd
