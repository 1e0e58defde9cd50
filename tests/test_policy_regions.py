"""Performance routing per region: plans choose per region and the client network breaks ties at query
time, giving the same replica as the per-network rule they replaced (kept here as the reference), ties
stable per network, and a dropped replica moving only its own clients. Plans kept across a health or
override change (runtime.replan) equal plans built afresh."""
from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import replace
from types import MappingProxyType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsd.answers.tables import network_regions
from dnsd.model import AllDownPolicy, ClientNetwork, GeoIPSettings, Registry, Replica, Topology
from dnsd.routing import policy
from dnsd.routing.health import EndpointHealth, HealthSnapshot, Status
from dnsd.routing.overrides import DRAIN, FORCE_DOWN, FORCE_UP, Override
from dnsd.serving.runtime import Snapshot, build_plans, replan
from tests.dnstest import engine_from

DEGRADED = EndpointHealth(Status.DEGRADED, "HTTP 503 from /v2/")
SUSPECT = EndpointHealth(Status.ONLINE, "last check failed", trend="suspect")


@functools.cache
def example_snapshot() -> Snapshot:
    return engine_from(None).snapshot


# -- the per-network rule the per-region plans replaced (the reference) ------------------------------

def reference_hash(*parts: object) -> float:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def reference_nearest(registry: Registry, topology: Topology, serving, region: str, tie_key: object) -> int:
    replicas = registry.replicas
    best = min(topology.latency(region, replicas[i].location) for i in serving)
    tied = [i for i in serving if topology.latency(region, replicas[i].location) == best]
    if len(tied) == 1:
        return tied[0]
    return max(tied, key=lambda i: reference_hash("tie", registry.name, tie_key, replicas[i].name))


def reference_by_network(registry: Registry, topology: Topology, serving) -> tuple[int, ...]:
    """One replica per client network, then the default, then per GeoIP region: the old plan's table."""
    replicas = registry.replicas
    by_network = tuple(reference_nearest(registry, topology, serving, network.region, key)
                       for key, network in enumerate(topology.client_networks))
    by_network += (reference_nearest(registry, topology, serving,
                                     topology.default_region or replicas[serving[0]].location, "default"),)
    if topology.geoip is not None:
        by_network += tuple(reference_nearest(registry, topology, serving, region, f"geoip {region}")
                            for region in topology.regions)
    return by_network


def choices(plan: policy.RoutingPlan, topology: Topology) -> tuple[int | None, ...]:
    """The plan's replica for every network index (client networks, default, GeoIP regions)."""
    regions = network_regions(topology)
    return tuple(plan.choice(network, region, 0) for network, region in enumerate(regions))


# -- random topologies ------------------------------------------------------------------------------

@st.composite
def topologies(draw) -> tuple[Topology, Registry]:
    """A few regions with small latencies (so ties are common), client networks in them, one
    performance registry whose replicas may share a location."""
    regions = tuple(f"r{i}" for i in range(draw(st.integers(1, 5))))
    latency = {}
    for i, a in enumerate(regions):
        latency[(a, a)] = 0
        for b in regions[i + 1:]:
            latency[(a, b)] = latency[(b, a)] = draw(st.sampled_from((10, 20, 20, 30)))
    networks = tuple(ClientNetwork(ipaddress.ip_network(f"100.64.{i}.0/24"), draw(st.sampled_from(regions)))
                     for i in range(draw(st.integers(0, 12))))
    geoip = GeoIPSettings("unused.mmdb") if draw(st.booleans()) else None
    topology = Topology(regions, MappingProxyType(latency), networks, draw(st.sampled_from(regions)), geoip=geoip)
    count = draw(st.integers(1, 6))
    replicas = tuple(Replica(f"rep{i}", draw(st.sampled_from(regions)), f"rep{i}.example.test", (), 1, i,
                             global_routing=draw(st.booleans()) or i == 0)
                     for i in range(count))
    registry = Registry(draw(st.sampled_from(("contoso", "fabrikam", "reg0042"))), "performance",
                        AllDownPolicy("fail_open"), True, True, replicas)
    return topology, registry


@st.composite
def healths(draw, registry: Registry) -> HealthSnapshot:
    snapshot = HealthSnapshot()
    for replica in registry.replicas:
        state = draw(st.sampled_from((None, None, DEGRADED, SUSPECT)))
        if state is not None:
            snapshot = snapshot.with_status(registry.name, replica.name, state)
    return snapshot


@st.composite
def overrides_for(draw, registry: Registry) -> MappingProxyType:
    chosen = {}
    for replica in registry.replicas:
        kind = draw(st.sampled_from((None, None, None, DRAIN, FORCE_DOWN, FORCE_UP)))
        if kind is not None:
            chosen[(registry.name, replica.name)] = Override(registry.name, replica.name, kind, "test", "t", 0.0, None)
    return MappingProxyType(chosen)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_per_region_plans_choose_as_the_per_network_rule(data):
    topology, registry = data.draw(topologies())
    health = data.draw(healths(registry))
    overrides = data.draw(overrides_for(registry))
    plan = policy.plan(registry, topology, health, overrides)
    if plan.by_region:
        assert choices(plan, topology) == reference_by_network(registry, topology, plan.serving)
    else:  # not routed per client: every network gets the same answer, as before
        assert len(set(choices(plan, topology))) == 1


def test_ties_follow_the_client_network_and_never_flip():
    """One region equally far from three replicas: each network keeps its pick across health changes
    of other replicas, fresh plans, and repeated asks; the networks spread over all three."""
    topology, registry = tie_topology(networks=60)
    regions = network_regions(topology)
    first = choices(policy.plan(registry, topology, HealthSnapshot()), topology)
    assert {first[n] for n in range(60)} == {0, 1, 2}
    far_away_down = HealthSnapshot().with_status(registry.name, "far", DEGRADED)
    for health in (HealthSnapshot(), far_away_down, HealthSnapshot()):
        plan = policy.plan(registry, topology, health)
        for _ in range(2):
            assert [plan.choice(n, regions[n], 0) for n in range(60)] == list(first[:60])


@settings(max_examples=100, deadline=None)
@given(dropped=st.integers(0, 2), networks=st.integers(1, 80))
def test_a_dropped_replica_moves_only_its_own_clients(dropped, networks):
    topology, registry = tie_topology(networks=networks)
    before = choices(policy.plan(registry, topology, HealthSnapshot()), topology)
    down = HealthSnapshot().with_status(registry.name, registry.replicas[dropped].name, DEGRADED)
    after = choices(policy.plan(registry, topology, down), topology)
    for network in range(networks):
        if before[network] != dropped:
            assert after[network] == before[network], network   # stays where it was
        else:
            assert after[network] in {0, 1, 2} - {dropped}, network   # moves to a tied survivor


def tie_topology(networks: int) -> tuple[Topology, Registry]:
    """Clients in "mid", 10 ms from replicas a, b and c; "far" is 50 ms away."""
    regions = ("mid", "ra", "rb", "rc", "rfar")
    latency = {(a, b): 0 if a == b else 40 for a in regions for b in regions}
    for near in ("ra", "rb", "rc"):
        latency[("mid", near)] = latency[(near, "mid")] = 10
    latency[("mid", "rfar")] = latency[("rfar", "mid")] = 50
    topology = Topology(regions, MappingProxyType(latency),
                        tuple(ClientNetwork(ipaddress.ip_network(f"100.64.{i}.0/24"), "mid") for i in range(networks)),
                        "mid")
    replicas = tuple(Replica(name, location, f"{name}.example.test", (), 1, i, True)
                     for i, (name, location) in enumerate((("a", "ra"), ("b", "rb"), ("c", "rc"), ("far", "rfar"))))
    return topology, Registry("contoso", "performance", AllDownPolicy("fail_open"), True, True, replicas)


# -- plans kept across changes ------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_plans_kept_across_a_change_equal_plans_built_afresh(data):
    snapshot = example_snapshot()
    config = snapshot.config
    pairs = [(reg.name, rep.name) for reg in config.registries for rep in reg.replicas]

    def draw_state():
        health = HealthSnapshot()
        chosen = {}
        for registry, replica in data.draw(st.lists(st.sampled_from(pairs), max_size=4)):
            health = health.with_status(registry, replica, data.draw(st.sampled_from((DEGRADED, SUSPECT))))
        for registry, replica in data.draw(st.lists(st.sampled_from(pairs), max_size=3)):
            kind = data.draw(st.sampled_from((DRAIN, FORCE_DOWN, FORCE_UP)))
            chosen[(registry, replica)] = Override(registry, replica, kind, "test", "t", 0.0, None)
        return health, MappingProxyType(chosen)

    health, overrides = draw_state()
    old = replace(snapshot, health=health, overrides=overrides, plans=build_plans(config, health, overrides))
    new_health, new_overrides = draw_state()
    for health_after, overrides_after in ((new_health, overrides), (health, new_overrides),
                                          (new_health, new_overrides)):
        kept = replan(old, health_after, overrides_after)
        assert kept == build_plans(config, health_after, overrides_after)


def test_an_unchanged_registry_keeps_its_plan_object():
    old = example_snapshot()
    first, *others = old.config.registries
    health = old.health.with_status(first.name, first.replicas[0].name, DEGRADED)
    kept = replan(old, health, old.overrides)
    assert kept[0] is not old.plans[0] and kept[0].serving != old.plans[0].serving
    assert all(after is before for after, before in zip(kept[1:], old.plans[1:]))


def test_the_example_configs_regions_map_networks_in_order():
    """Each client network to its region's index, then the default's entry (after the regions)."""
    topology = example_snapshot().config.topology
    expected = tuple(topology.regions.index(cn.region) for cn in topology.client_networks) + (len(topology.regions),)
    assert network_regions(topology) == expected
