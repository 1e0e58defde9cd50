"""The fast path (pre-packed answers from compiled tables) against the full path (resolve every query
from the zone data, then encode): the same answer for every query in a table of names, qtypes,
views, ECS prefixes, health states, overrides and routing methods."""
from __future__ import annotations

import itertools

import dns.edns
import dns.message
import pytest

from dnsd.protocol import wire
from dnsd.answers.encode import encode_answer
from dnsd.routing.health import EndpointHealth, HealthSnapshot, Status
from dnsd.records import type_number
from dnsd.answers.resolve import resolve
from dnsd.serving.runtime import ClientContext, QueryEngine, choose, view_choice
from tests.dnstest import engine_from, make_query, variant

NAMES = ["contoso.azurecr.test", "contoso.privatelink.azurecr.test", "contoso.tm.azurecr.test",
         "contoso.eastus.geo.azurecr.test", "contoso.westeurope.data.azurecr.test",
         "contoso.southeastasia.geo.privatelink.azurecr.test", "contoso.eastus.reg.azurecr.test",
         "azurecr.test", "ns1.azurecr.test", "geo.azurecr.test", "nothing.azurecr.test",
         "CoNtOsO.AzUrEcR.TeSt", "example.com", "_acme-challenge.contoso.azurecr.test"]
QTYPES = ["A", "AAAA", "CNAME", "ANY", "TXT", "MX", "SOA", "NS", "CAA", "SRV", "HTTPS"]
CLIENTS = [("127.0.0.5", None), ("203.0.113.9", None), ("127.0.0.70", None), ("192.0.2.1", "10.1.4.0/24"),
           ("192.0.2.1", "198.51.100.0/24"), ("192.0.2.1", "198.51.100.0/22"), ("192.0.2.1", "10.0.0.0/8"),
           ("192.0.2.1", "0.0.0.0/0"), ("::1", None), ("192.0.2.1", "2001:db8:100::/48"),
           ("192.0.2.1", "11.0.7.0/24"), ("192.0.2.1", "11.0.9.0/24"),
           # the example's trusted resolver 127.0.0.53: its ECS chooses the view (VNet, public, /0)
           ("127.0.0.53", "10.1.4.0/24"), ("127.0.0.53", "198.51.100.0/24"), ("127.0.0.53", "0.0.0.0/0"),
           ("127.0.0.53", "10.0.0.0/8"), ("127.0.0.53", None),
           # a VNet source with a public ECS (untrusted: the source decides the view, ECS the region)
           ("127.0.0.70", "198.51.100.0/24"), ("127.0.0.70", "10.1.4.0/24")]


def degraded(*names, trend=""):
    snapshot = HealthSnapshot()
    for name in names:
        snapshot = snapshot.with_status("contoso", name, EndpointHealth(Status.DEGRADED, "HTTP 503", 1.0, trend))
    return snapshot


SUSPECT = HealthSnapshot().with_status("contoso", "eastus", EndpointHealth(Status.ONLINE, "ok", 1.0, "suspect"))
SCENARIOS = {
    "performance, all online": (variant(), None),
    "performance, eastus degraded": (variant(), degraded("eastus")),
    "performance, all degraded (fail open)": (variant(), degraded("eastus", "westeurope", "southeastasia")),
    "weighted, westeurope recovering": (variant(**{"registries.contoso.routing": "weighted"}),
                                        degraded("westeurope", trend="recovering")),
    "priority, eastus suspect": (variant(**{"registries.contoso.routing": "priority"}), SUSPECT),
    "servfail when all down": (variant(**{"registries.contoso.all_down": "servfail"}),
                               degraded("eastus", "westeurope", "southeastasia")),
}


def full_path(engine: QueryEngine, query_wire: bytes, client_ip: str, tcp: bool) -> bytes:
    """The reference: resolve this one query from the zone data, encode it, no compiled tables."""
    query = wire.parse_query(query_wire)
    snapshot = engine.snapshot
    client = ClientContext.of(client_ip, query)
    zd = snapshot.compiled.zd
    if query.qtype in (251, 252) or query.qclass != 1:
        return wire.error_response(query, 5)
    view, view_by_ecs = view_choice(snapshot.compiled, client)
    short = {i for i, plan in enumerate(snapshot.plans) if plan.short_ttl}
    depends = []

    def chooser(registry_index):
        depends.append(snapshot.plans[registry_index].depends_on_client)
        return choose(snapshot, client, registry_index)

    answer = resolve(zd, view, query.qname(), query.qtype, chooser, short_ttl=short)
    if answer.rcode == 5:
        return wire.error_response(query, 5)
    if answer.rcode == 2:
        return wire.error_response(query, 2)
    # ECS scope: the source prefix when the answer depends on the ECS subnet (a view ECS chose, or
    # the routing choice); a view chosen by source address is the same for every subnet
    others = lambda registry_index: choose(snapshot, client, registry_index)  # noqa: E731 (not in `depends`)
    view_dependent = any(resolve(zd, other, query.qname(), query.qtype, others, short_ttl=short) != answer
                         for other in range(len(zd.views)) if other != view)
    import dataclasses
    answer = dataclasses.replace(answer, client_dependent=view_dependent)
    packed = encode_answer(answer, len(query.qname_key), query.qname())
    scope = None
    if query.edns is not None and query.edns.ecs is not None:
        dependent = (view_dependent and view_by_ecs) or any(depends)
        scope = query.edns.ecs.source_prefix if dependent else 0
    return wire.build_response(query, packed, max_udp_size=None if tcp else wire.udp_limit(query), ecs_scope=scope)


def comparable(reply: bytes) -> tuple:
    message = dns.message.from_wire(reply)
    options = tuple(sorted((o.otype, o.to_wire() if hasattr(o, "to_wire") else repr(o)) for o in message.options))
    return (message.id, message.flags, message.rcode(), message.question[0].to_text(),
            tuple(r.to_text() for r in message.answer), tuple(r.to_text() for r in message.authority),
            tuple(sorted(r.to_text() for r in message.additional)), message.edns, message.payload, options)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fast_path_equals_full_path(scenario):
    data, health = SCENARIOS[scenario]
    engine = engine_from(data, health)
    compared = 0
    for name, qtype, (client_ip, ecs), tcp in itertools.product(NAMES, QTYPES, CLIENTS, (False, True)):
        if tcp and qtype not in ("A", "ANY"):
            continue
        query = make_query(name, qtype, ecs=ecs, qid=compared % 65536)
        query_wire = query.to_wire()
        fast = engine.handle(query_wire, client_ip, tcp)
        reference = full_path(engine, query_wire, client_ip, tcp)
        assert comparable(fast) == comparable(reference), (scenario, name, qtype, client_ip, ecs, tcp)
        compared += 1
    assert compared > 1500


def test_the_reference_really_differs_from_a_wrong_answer():
    """Guard against a comparison that cannot fail: different clients do get different answers."""
    engine = engine_from()
    east = engine.handle(make_query("contoso.azurecr.test", ecs="127.0.0.0/24", qid=1).to_wire(), "192.0.2.1", False)
    west = engine.handle(make_query("contoso.azurecr.test", ecs="198.51.100.0/24", qid=1).to_wire(), "192.0.2.1", False)
    assert comparable(east) != comparable(west)
    assert type_number("HTTPS") == 65


def test_packet_cache_hits_are_counted_and_a_swap_empties_it():
    import dataclasses

    from dnsd.serving.runtime import build_plans
    engine = engine_from()
    query = make_query("contoso.azurecr.test", ecs="127.0.0.0/24", qid=7).to_wire()
    first = engine.handle(query, "192.0.2.1", False)
    again = engine.handle(b"\x00\x08" + query[2:], "192.0.2.1", False)
    assert again[:2] == b"\x00\x08" and again[2:] == first[2:]            # same reply, the new ID
    assert sum(engine.stats.counts.values()) == 2                         # hits are counted too
    other_client = engine.handle(query, "203.0.113.9", False)             # the key includes the client
    assert len(engine.cache) == 2 and other_client[2:] == first[2:]       # (same answer: ECS decides)
    old = engine.snapshot
    health = degraded("eastus")
    engine.swap(dataclasses.replace(old, health=health, plans=build_plans(old.config, health)))
    assert engine.cache == {}
    after = dns.message.from_wire(engine.handle(query, "192.0.2.1", False))
    assert after.answer[-1][0].address == "127.0.0.12"                    # not the cached eastus answer
