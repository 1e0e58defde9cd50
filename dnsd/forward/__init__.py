"""Forwarding (issue 10): names outside our zone resolved through upstream resolvers, with a cache, for
allowed clients only, so docker hosts can use dnsd as their resolver without it becoming an open one.

Settings: dnsd.model.ForwardSettings (the config's `forward:` section, every default there; the
addresses come from dnsd.config.upstreams). Modules: upstreams (SRTT order, per-upstream counters),
exchange (one query over UDP or TCP), message (the hand-written walker: upstream query, reply checks,
cleaning, client replies), cache (entries, lifetimes, LRU, serve-stale, flush), forwarder (Forwarder:
the entry points, coalescing, failover, describe). Wired in by dnsd.serving (QueryEngine, Dnsd).

Per query (a wire.Query from parse_query; the caller has answered BADVERS and malformed input):
    answer_now: client in clients? name outside our zone? class IN, no zone transfer?
                (else REFUSED) -> fresh cache entry? -> reply now
    answer_later: the same refusals again (no caller can skip them), then: the lookup for this key
                under way? join it (coalescing) : start one, unless
                max_in_flight lookups run (then stale or SERVFAIL) -> reply from its entry;
                no entry -> stale entry within cache.serve_stale (TTL 30, RFC 8767) or SERVFAIL;
                with a stale entry, a lookup still under way after cache.stale_answer_after gets
                the stale answer too (RFC 8767's client response timer) and goes on to refresh it
    lookup:     upstreams by SRTT (lowest first; the others' SRTT decays a little each time they are
                passed over, so slower ones are re-measured now and then) -> per try: fresh random
                ID (secrets), fresh socket (kernel-random port), our OPT (udp 1232, DO as the
                client's; never the client's ECS), UDP then TCP on TC=1, try_timeout per try and one
                deadline for all. Only a reply from the upstream's address and port, with our ID, QR
                set and our question (case-insensitive) counts; others are counted as mismatched and
                the wait goes on. SERVFAIL/REFUSED/FORMERR/NOTIMP, timeouts, unreachable or malformed
                -> next upstream; upstreams that timed out get another round while the deadline allows.

Cleaning an upstream reply (message.clean_reply): every name is decompressed while walking, records
owned by a name in our zone are dropped, the additional section (glue: the usual place for poison)
and the upstream's OPT are dropped, and the message is rewritten with our own compression (rdata
names only for RFC 1035 types; other types' rdata byte for byte). DNSSEC records pass untouched when
the client set DO: geotm does not validate, never sets AD, passes CD upstream.

Cache: key (lower-cased qname, qtype, qclass, DO, CD; CD because an answer fetched with checking
disabled must not reach clients relying on upstream validation). Positive answers live as long as
their shortest answer TTL, each TTL clamped to [min_ttl, max_ttl]; NXDOMAIN/NODATA live min(SOA TTL,
SOA MINIMUM) capped by max_negative_ttl (RFC 2308), and are not cached at all without a SOA; SERVFAIL
and other failures are never cached. Entries keep the records' bytes with the TTL offsets, so a hit
only patches the TTLs (counted down by age) and glues header + the client's own question + records +
our OPT; a reply above the client's UDP limit is sent empty with TC=1. Bounded by entries and bytes,
least recently used out first; flush(name) drops every type of a name, flush_all everything.

Counters are plain attributes (Forwarder.stats, Upstream.stats, Upstream.srtt, Forwarder.cache's
len/bytes, in_flight); describe() gives explain the upstream order and the cache state of a question.
"""
from dnsd.forward.forwarder import Description, Forwarder, ForwardStats

__all__ = ["Description", "ForwardStats", "Forwarder"]
