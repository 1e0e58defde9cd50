"""Answer one question from the zone's names: CNAME chains, NXDOMAIN/NODATA, ANY. Pure; the choice of
replica for a traffic-manager hop is passed in."""
from __future__ import annotations

from typing import Callable, Container

from dnsd.answers import answer as rc
from dnsd import names
from dnsd import records
from dnsd.answers.answer import Answer
from dnsd.records import RR, NameRdata
from dnsd.answers.zonedata import AliasNode, StaticNode, TrafficManagerNode, ZoneData

MAX_CHAIN = 12  # CNAME hops we follow inside the zone before giving up (a loop, or a silly config)

# chooser(registry_index) -> (replica index or None for SERVFAIL, why)
Chooser = Callable[[int], tuple[int | None, str]]


def negative_soa(zd: ZoneData) -> RR:
    """The SOA for NXDOMAIN/NODATA: its TTL is the negative-caching time (RFC 2308 §3)."""
    soa = zd.soa
    return RR(soa.name, soa.rtype, min(soa.ttl, soa.rdata.minimum), soa.rdata)


def resolve(zd: ZoneData, view: int, qname: str, qtype: int, choose: Chooser,
            short_ttl: Container[int] = ()) -> Answer:
    """short_ttl: registries whose traffic-manager hop gets the short TTL (a replica suspect or recovering)."""
    trace = [f"view {zd.views[view]}"]
    if not names.is_subdomain(qname, zd.zone):
        return Answer(rc.REFUSED, authoritative=False, trace=tuple(trace + [f"{qname} is not in zone {zd.zone}"]))
    chain: list[RR] = []
    name = qname
    seen = set()
    for _ in range(MAX_CHAIN):
        if name in seen:
            trace.append(f"CNAME loop at {name}")
            return Answer(rc.SERVFAIL, tuple(chain), trace=tuple(trace))
        seen.add(name)
        node = zd.node(view, name)
        if node is None:
            if not names.is_subdomain(name, zd.zone):
                trace.append(f"{name} is outside the zone: the resolver follows it from here")
                return Answer(rc.NOERROR, tuple(chain), trace=tuple(trace))
            if name in zd.empty_non_terminals:
                trace.append(f"{name}: exists only as a parent of other names: NODATA")
                return Answer(rc.NOERROR, tuple(chain), (negative_soa(zd),), trace=tuple(trace))
            trace.append(f"{name}: no such name: NXDOMAIN")
            return Answer(rc.NXDOMAIN, tuple(chain), (negative_soa(zd),), trace=tuple(trace))
        if isinstance(node, StaticNode):
            rrset = _pick_rrset(node, qtype)
            if rrset:
                trace.append(f"{name}: {node.kind}: {records.type_name(rrset[0].rtype)}")
                additional = _glue(zd, view, rrset) if rrset[0].rtype in (records.NS, records.MX) else ()
                return Answer(rc.NOERROR, tuple(chain) + rrset, (), additional, trace=tuple(trace))
            trace.append(f"{name}: {node.kind}: no {records.type_name(qtype)} records: NODATA")
            return Answer(rc.NOERROR, tuple(chain), (negative_soa(zd),), trace=tuple(trace))
        if isinstance(node, AliasNode):
            rr = node.rr
            trace.append(f"{name}: {node.kind}: CNAME {rr.rdata.target}")
        else:
            assert isinstance(node, TrafficManagerNode)
            registry = zd.config.registries[node.registry_index]
            index, why = choose(node.registry_index)
            if index is None:
                trace.append(f"{name}: traffic manager: {why}")
                return Answer(rc.SERVFAIL, tuple(chain), authoritative=True, trace=tuple(trace))
            replica = registry.replicas[index]
            ttl = (min(node.ttl, zd.config.zone.ttls.traffic_manager_short)
                   if node.registry_index in short_ttl else node.ttl)
            rr = RR(node.owner, records.CNAME, ttl, NameRdata(replica.host))
            trace.append(f"{name}: traffic manager chose {replica.name}: {why}")
        chain.append(rr)
        if qtype in (records.CNAME, records.ANY):
            return Answer(rc.NOERROR, tuple(chain), trace=tuple(trace))
        name = rr.rdata.target
    trace.append(f"CNAME chain longer than {MAX_CHAIN} hops")
    return Answer(rc.SERVFAIL, tuple(chain), trace=tuple(trace))


def _pick_rrset(node: StaticNode, qtype: int) -> tuple[RR, ...]:
    if qtype == records.ANY:
        # RFC 8482: answer ANY with one RRset instead of everything (no amplification); the lowest type.
        return node.rrsets[min(node.rrsets)] if node.rrsets else ()
    return node.rrsets.get(qtype, ())


def _glue(zd: ZoneData, view: int, rrset: tuple[RR, ...]) -> tuple[RR, ...]:
    """Addresses of in-zone NS/MX targets, so resolvers need no second query."""
    glue: list[RR] = []
    for rr in rrset:
        target = rr.rdata.target if rr.rtype == records.NS else rr.rdata.exchange
        node = zd.node(view, target)
        if isinstance(node, StaticNode):
            glue.extend(node.rrsets.get(records.A, ()) + node.rrsets.get(records.AAAA, ()))
    return tuple(glue)
