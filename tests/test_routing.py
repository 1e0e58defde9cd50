"""Routing of the global name: performance, weighted, priority, health, global_routing off, all-down policy."""
from __future__ import annotations

import collections
import ipaddress

import pytest

from dnsd.routing.health import EndpointHealth, HealthSnapshot, Status
from tests.dnstest import ask, engine_from, rcode_text, variant

DEGRADED = EndpointHealth(Status.DEGRADED, "HTTP 503 from /v2/")


def health(*degraded: str) -> HealthSnapshot:
    snapshot = HealthSnapshot()
    for name in degraded:
        snapshot = snapshot.with_status("contoso", name, DEGRADED)
    return snapshot


def chosen(engine, client="127.0.0.5", ecs=None) -> str:
    """The replica the traffic-manager hop points at, or the rcode when there is none."""
    reply = ask(engine, "contoso.azurecr.test", client=client, ecs=ecs)
    for rrset in reply.answer:
        if rrset.name.to_text() == "contoso.tm.azurecr.test.":
            return rrset[0].target.to_text().split(".")[1]
    return rcode_text(reply)


# (routing, degraded replicas, client ECS, expected replica)
ROUTING_TABLE = [
    ("performance", (), "127.0.0.0/24", "eastus"),
    ("performance", ("eastus",), "127.0.0.0/24", "westeurope"),            # next nearest: 85 ms
    ("performance", ("eastus", "westeurope"), "127.0.0.0/24", "southeastasia"),
    ("performance", ("westeurope",), "198.51.100.0/24", "eastus"),         # 85 < 160
    ("performance", ("southeastasia",), "203.0.113.0/24", "westeurope"),   # 160 < 215
    ("priority", (), "198.51.100.0/24", "eastus"),                         # priority 1 wherever the client is
    ("priority", ("eastus",), "198.51.100.0/24", "westeurope"),
    ("priority", ("eastus", "westeurope"), "203.0.113.0/24", "southeastasia"),
]


@pytest.mark.parametrize("routing,degraded,ecs,expected", ROUTING_TABLE,
                         ids=[f"{r}-down:{','.join(d) or 'none'}-{e}" for r, d, e, _ in ROUTING_TABLE])
def test_global_routing(routing, degraded, ecs, expected):
    engine = engine_from(variant(**{"registries.contoso.routing": routing}), health(*degraded))
    assert chosen(engine, ecs=ecs) == expected


@pytest.mark.parametrize("degraded", [("eastus",), ("eastus", "westeurope", "southeastasia")])
def test_regional_and_data_names_ignore_health(degraded):
    engine = engine_from(health=health(*degraded))
    for kind in ("geo", "data"):
        reply = ask(engine, f"contoso.eastus.{kind}.azurecr.test")
        assert [rdata.address for rdata in reply.answer[-1]] == ["127.0.0.11"]


def test_global_routing_off_skips_the_replica_but_keeps_its_regional_name():
    engine = engine_from(variant(**{"registries.contoso.replicas.eastus.global_routing": False}))
    assert chosen(engine, ecs="127.0.0.0/24") == "westeurope"
    reply = ask(engine, "contoso.eastus.geo.azurecr.test")
    assert reply.answer[-1][0].address == "127.0.0.11"


@pytest.mark.parametrize("policy,expected", [
    ("fail_open", "eastus"),                                   # as if all were healthy: nearest
    ("servfail", "SERVFAIL"),
    ({"policy": "fallback", "replica": "southeastasia"}, "southeastasia"),
])
def test_all_down_policy(policy, expected):
    engine = engine_from(variant(**{"registries.contoso.all_down": policy}),
                         health("eastus", "westeurope", "southeastasia"))
    assert engine.snapshot.plans[0].all_down
    assert chosen(engine, ecs="127.0.0.0/24") == expected
    # regional names still answer whatever the policy
    assert ask(engine, "contoso.westeurope.geo.azurecr.test").answer[-1][0].address == "127.0.0.12"


def test_all_down_fail_open_is_visible_in_the_plan_reason():
    engine = engine_from(health=health("eastus", "westeurope", "southeastasia"))
    assert "all-down policy fail_open" in engine.snapshot.plans[0].reason


def subnets(count: int):
    for i in range(count):
        yield str(ipaddress.IPv4Address(0x0B000000 + (i << 8))) + "/24"   # 11.0.0.0/24, 11.0.1.0/24, ...


def test_weighted_shares_follow_weights_and_stick_per_client():
    engine = engine_from(variant(**{"registries.contoso.routing": "weighted",
                                    "registries.contoso.replicas.eastus.weight": 60,
                                    "registries.contoso.replicas.westeurope.weight": 30,
                                    "registries.contoso.replicas.southeastasia.weight": 10}))
    picks = {ecs: chosen(engine, ecs=ecs) for ecs in subnets(600)}
    shares = collections.Counter(picks.values())
    assert 0.50 < shares["eastus"] / 600 < 0.70, shares
    assert 0.20 < shares["westeurope"] / 600 < 0.40, shares
    assert 0.03 < shares["southeastasia"] / 600 < 0.17, shares
    for ecs in list(picks)[:50]:   # sticky: the same subnet gets the same replica again
        assert chosen(engine, ecs=ecs) == picks[ecs]


def test_weighted_failover_moves_only_the_failed_replicas_clients():
    data = variant(**{"registries.contoso.routing": "weighted"})
    healthy = engine_from(data)
    before = {ecs: chosen(healthy, ecs=ecs) for ecs in subnets(300)}
    engine = engine_from(data, health("westeurope"))
    after = {ecs: chosen(engine, ecs=ecs) for ecs in before}
    for ecs, replica in before.items():
        if replica != "westeurope":
            assert after[ecs] == replica
        else:
            assert after[ecs] in ("eastus", "southeastasia")


def test_weight_zero_gets_no_traffic():
    engine = engine_from(variant(**{"registries.contoso.routing": "weighted",
                                    "registries.contoso.replicas.westeurope.weight": 0}))
    assert "westeurope" not in {chosen(engine, ecs=ecs) for ecs in subnets(200)}


def test_performance_ties_are_stable_per_client_network_and_spread_across_networks():
    """A client region equally far from two replicas: each client network always gets the same one."""
    data = variant(**{"latency_ms": {"eastus": {"westeurope": 50, "southeastasia": 50},
                                     "westeurope": {"southeastasia": 100}},
                      "regions": ["eastus", "westeurope", "southeastasia"],
                      "registries.contoso.replicas.eastus.global_routing": False})
    networks = {f"100.64.{i}.0/24": "eastus" for i in range(40)}
    data["clients"]["networks"] = networks
    engine = engine_from(data)
    picks = {net: chosen(engine, ecs=net) for net in networks}
    assert set(picks.values()) == {"westeurope", "southeastasia"}   # both used across networks
    for _ in range(3):
        assert {net: chosen(engine, ecs=net) for net in networks} == picks   # never flips


@pytest.mark.parametrize("setting,kind", [("regional_endpoints", "geo"), ("data_endpoints", "data")])
def test_endpoints_off_are_nxdomain(setting, kind):
    data = variant(**{f"registries.contoso.{setting}": False})
    del data["views"]["corp-vnet"]["private_endpoints"]["contoso"]["regional" if kind == "geo" else "data"]
    engine = engine_from(data)
    assert rcode_text(ask(engine, f"contoso.eastus.{kind}.azurecr.test")) == "NXDOMAIN"
    assert rcode_text(ask(engine, f"contoso.eastus.{kind}.azurecr.test", client="127.0.0.70")) == "NXDOMAIN"
    other = "data" if kind == "geo" else "geo"
    assert rcode_text(ask(engine, f"contoso.eastus.{other}.azurecr.test")) == "NOERROR"


def test_registry_without_private_endpoints_skips_the_privatelink_hop():
    data = variant(views={})
    engine = engine_from(data)
    reply = ask(engine, "contoso.azurecr.test")
    assert reply.answer[0].to_text().split()[-1] == "contoso.tm.azurecr.test."
    assert rcode_text(ask(engine, "contoso.privatelink.azurecr.test")) == "NXDOMAIN"


def test_replica_host_outside_the_zone_ends_the_chain_with_its_cname():
    data = variant()
    data["registries"]["contoso"]["replicas"]["eastus"] = {"location": "eastus",
                                                           "host": "contoso-eastus.example.net."}
    engine = engine_from(data)
    reply = ask(engine, "contoso.eastus.geo.azurecr.test")
    assert [r.to_text() for r in reply.answer] == [
        "contoso.eastus.geo.azurecr.test. 300 IN CNAME contoso-eastus.example.net."]
    assert rcode_text(reply) == "NOERROR" and not reply.authority


# -- operator overrides and health-aware TTLs -------------------------------------------------

from types import MappingProxyType  # noqa: E402

from dnsd.routing.overrides import DRAIN, FORCE_DOWN, FORCE_UP, Override  # noqa: E402
from dnsd.serving.runtime import QueryEngine, new_snapshot  # noqa: E402
from tests.dnstest import config_from, example_dict  # noqa: E402


def engine_with(overrides: dict, health_snapshot=None) -> QueryEngine:
    table = MappingProxyType({("contoso", rep): Override("contoso", rep, kind, "drill", "ops", 0.0, None)
                              for rep, kind in overrides.items()})
    return QueryEngine(new_snapshot(config_from(example_dict()), health_snapshot, overrides=table))


OVERRIDE_TABLE = [
    # (overrides, degraded by probes, client ECS, expected replica)
    ({"eastus": DRAIN}, (), "127.0.0.0/24", "westeurope"),
    ({"eastus": FORCE_DOWN}, (), "127.0.0.0/24", "westeurope"),
    ({"eastus": FORCE_UP}, ("eastus",), "127.0.0.0/24", "eastus"),          # operator beats probes
    ({"westeurope": FORCE_UP}, ("eastus", "westeurope", "southeastasia"), "127.0.0.0/24", "westeurope"),
    ({"eastus": DRAIN, "westeurope": DRAIN}, (), "198.51.100.0/24", "southeastasia"),
    ({"eastus": DRAIN, "westeurope": DRAIN, "southeastasia": DRAIN}, (), "127.0.0.0/24", "eastus"),  # all: fail open
]


@pytest.mark.parametrize("overrides,degraded,ecs,expected", OVERRIDE_TABLE,
                         ids=[f"{o}-down:{','.join(d) or 'none'}" for o, d, _, _ in OVERRIDE_TABLE])
def test_overrides(overrides, degraded, ecs, expected):
    assert chosen(engine_with(overrides, health(*degraded)), ecs=ecs) == expected


def test_drained_replica_keeps_regional_and_data_names():
    engine = engine_with({"eastus": DRAIN})
    for kind in ("geo", "data"):
        assert ask(engine, f"contoso.eastus.{kind}.azurecr.test").answer[-1][0].address == "127.0.0.11"


def test_drain_shows_in_the_plan_reason():
    engine = engine_with({"westeurope": DRAIN})
    assert "drained: westeurope (drain by ops (drill))" in engine.snapshot.plans[0].reason


def tm_ttl(engine) -> int:
    reply = ask(engine, "contoso.azurecr.test")
    return next(r.ttl for r in reply.answer if r.name.to_text() == "contoso.tm.azurecr.test.")


@pytest.mark.parametrize("trend,replica,expected", [
    ("", "eastus", 30),
    ("suspect", "eastus", 5),           # online, but its last checks failed: clients re-resolve soon
    ("recovering", "westeurope", 5),    # degraded, but passing again: it may come back any moment
])
def test_health_aware_traffic_manager_ttl(trend, replica, expected):
    status = Status.DEGRADED if trend == "recovering" else Status.ONLINE
    snapshot = HealthSnapshot().with_status("contoso", replica, EndpointHealth(status, "x", 0.0, trend))
    engine = engine_from(health=snapshot)
    assert tm_ttl(engine) == expected
    # regional answers never change TTL
    assert ask(engine, "contoso.eastus.geo.azurecr.test").answer[0].ttl == 300


def test_short_ttl_is_ignored_for_an_overridden_replica():
    snapshot = HealthSnapshot().with_status("contoso", "eastus", EndpointHealth(Status.ONLINE, "x", 0.0, "suspect"))
    assert tm_ttl(engine_with({"eastus": DRAIN}, snapshot)) == 30


def test_short_ttl_bound_is_validated():
    data = variant(**{"zone.ttl.traffic_manager_short": 60})
    with pytest.raises(Exception) as caught:
        config_from(data)
    assert "traffic_manager_short 60 is longer than traffic_manager 30" in str(caught.value)
