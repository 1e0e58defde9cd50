"""The shared packet cache (QueryEngine: replies kept by client class, not by client address): many
source addresses asking the same questions get exactly the replies an engine with no cache builds for
each of them, and a question is built once per class, not once per address."""
from __future__ import annotations

import itertools
import random

import pytest

from dnsd.routing.health import EndpointHealth, HealthSnapshot, Status
from dnsd.serving import runtime
from dnsd.serving.runtime import QueryEngine
from tests.dnstest import engine_from, make_query, variant
from tests.test_forward_serving import make_dnsd

# Sources in every kind of place of the example config: client networks (eastus 127.0.0.0/26,
# westeurope 198.51.100.0/24, southeastasia 203.0.113.0/24, westeurope 2001:db8:100::/48), the
# default region, the VNet view (127.0.0.64/26, 10.1.0.0/16), its trusted resolver (127.0.0.53) and
# several /24s (weighted slots).
SOURCES = ["127.0.0.5", "127.0.0.6", "127.0.0.53", "127.0.0.70", "127.0.0.71", "10.1.2.3", "10.1.9.9",
           "198.51.100.7", "198.51.100.8", "203.0.113.9", "203.0.113.10", "192.0.2.1", "192.0.2.2",
           "192.0.3.1", "192.0.4.1", "8.8.8.8", "::1", "2001:db8:100::5", "2001:db8:100::6",
           "2001:db8:200::1"]
QUESTIONS = [("contoso.azurecr.test", "A", None), ("contoso.tm.azurecr.test", "A", None),
             ("contoso.privatelink.azurecr.test", "AAAA", None), ("contoso.eastus.geo.azurecr.test", "A", None),
             ("contoso.eastus.data.azurecr.test", "A", None), ("azurecr.test", "SOA", None),
             ("azurecr.test", "NS", None), ("nothing.azurecr.test", "A", None), ("example.com", "A", None),
             ("contoso.azurecr.test", "ANY", None), ("contoso.azurecr.test", "A", "10.1.4.0/24"),
             ("contoso.azurecr.test", "A", "198.51.100.0/24"), ("contoso.tm.azurecr.test", "A", "0.0.0.0/0")]


def degraded(name: str, trend: str = "") -> HealthSnapshot:
    return HealthSnapshot().with_status("contoso", name, EndpointHealth(Status.DEGRADED, "HTTP 503", 1.0, trend))


SCENARIOS = {
    "performance": (variant(), None),
    "performance, eastus degraded": (variant(), degraded("eastus")),
    "weighted": (variant(**{"registries.contoso.routing": "weighted"}), None),
    "weighted, westeurope recovering": (variant(**{"registries.contoso.routing": "weighted"}),
                                        degraded("westeurope", trend="recovering")),
    "priority": (variant(**{"registries.contoso.routing": "priority"}), None),
    # over UDP truncated (TC), over TCP whole: the transport is part of every key
    "eastus with 90 addresses": (variant(**{"registries.contoso.replicas.eastus.addresses":
                                            [f"127.0.1.{i}" for i in range(1, 91)]}), None),
}


def ask_all(engine: QueryEngine, order: list) -> list[tuple]:
    replies = []
    for qid, (source, (name, qtype, ecs), tcp) in enumerate(order):
        query = make_query(name, qtype, ecs=ecs, qid=qid % 65536).to_wire()
        replies.append((source, name, qtype, ecs, tcp, engine.handle(query, source, tcp)))
    return replies


def uncached(engine: QueryEngine, asked: tuple) -> bytes:
    """The reference: a new engine on the same snapshot (empty caches) answering this query alone."""
    source, name, qtype, ecs, tcp, reply = asked
    fresh = QueryEngine(engine.snapshot, engine.forwarder)
    return fresh.handle(reply[:2] + make_query(name, qtype, ecs=ecs).to_wire()[2:], source, tcp)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_many_sources_get_what_an_uncached_engine_builds_for_each(scenario):
    data, health = SCENARIOS[scenario]
    engine = engine_from(data, health)
    order = list(itertools.product(SOURCES, QUESTIONS, (False, True))) * 2
    random.Random(scenario).shuffle(order)
    replies = ask_all(engine, order)
    for asked in replies:
        assert asked[-1] == uncached(engine, asked), asked[:-1]
    assert len(engine.shared) < len(SOURCES) * len(QUESTIONS) * 2  # classes really were shared


@pytest.mark.parametrize("forwarding", [False, True])
def test_recursion_available_follows_the_class(tmp_path, forwarding):
    """With forwarding, loopback may recurse (RA) and 192.0.2.0/24 may not: never one's RA for the other."""
    dnsd = make_dnsd(tmp_path, {"upstreams": ["127.0.0.1:9"]} if forwarding else None)
    engine = dnsd.engine
    order = [(source, question, False) for source in ("127.0.0.5", "192.0.2.1", "127.0.0.6", "192.0.2.2")
             for question in QUESTIONS if question[0] != "example.com"]  # example.com: forwarded, not cached
    for asked in ask_all(engine, order):
        assert asked[-1] == uncached(engine, asked), asked[:-1]
        ra = bool(asked[-1][3] & runtime.RA)
        assert ra == (forwarding and asked[0].startswith("127.")), asked[:-1]


BUILT_ONCE_CASES = [
    # (routing, sources asking the global name, answers built)
    ("performance", [f"127.0.0.{i}" for i in range(1, 50)], 1),  # one client network (eastus), no view
    ("performance", ["127.0.0.5", "198.51.100.7", "203.0.113.9"], 3),     # three networks
    ("priority", ["127.0.0.5", "198.51.100.7", "203.0.113.9", "8.8.8.8"], 1),  # the same for everyone
    ("weighted", [f"192.0.2.{i}" for i in range(1, 200)], 1),            # one /24: one slot
    ("weighted", [f"192.0.{i}.1" for i in range(1, 41)], None),          # many /24s: one per slot
]


@pytest.mark.parametrize("routing, sources, built", BUILT_ONCE_CASES)
def test_a_question_is_built_once_per_class(monkeypatch, routing, sources, built):
    engine = engine_from(variant(**{"registries.contoso.routing": routing}))
    answered = []
    real_answer = engine.answer
    monkeypatch.setattr(engine, "answer", lambda *args: answered.append(args[1]) or real_answer(*args))
    query = make_query("contoso.azurecr.test", "A").to_wire()
    for source in sources:
        engine.handle(query, source, False)
    slots = {engine.client_classes[source].slot for source in sources}
    assert len(answered) == (built if built is not None else len(slots))
    assert sum(engine.stats.counts.values()) == len(sources)  # shared hits are counted too


def test_a_swap_and_a_new_forwarder_forget_shared_replies():
    engine = engine_from()
    engine.handle(make_query("contoso.azurecr.test").to_wire(), "127.0.0.5", False)
    assert engine.shared and engine.client_classes
    engine.swap(engine.snapshot)
    assert (engine.shared, engine.client_classes, engine.cache) == ({}, {}, {})
    engine.handle(make_query("contoso.azurecr.test").to_wire(), "127.0.0.5", False)
    engine.swap_forwarder(None)
    assert (engine.shared, engine.client_classes, engine.cache) == ({}, {}, {})


def test_a_source_that_is_no_address_is_answered_without_the_shared_cache():
    engine = engine_from()
    reply = engine.handle(make_query("contoso.azurecr.test").to_wire(), "not-an-address", False)
    assert reply[3] & 0xF == 2  # SERVFAIL, as before: the bug costs one answer
    assert engine.client_classes == {"not-an-address": None} and engine.shared == {}
