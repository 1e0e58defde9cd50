"""The registries section: each registry's routing and all-down policy, its replicas (location, host,
addresses, weight, priority, probe) checked against the zone and the topology."""
from __future__ import annotations

from dnsd import names
from dnsd.config import keys
from dnsd.config.checks import probe_spec
from dnsd.config.reader import Reader
from dnsd.config.topology import RegionPairs, unknown_region
from dnsd.config.yamlnodes import Map, Node, Scalar
from dnsd.config.zone import absolute_name
from dnsd.model import ALL_DOWN_POLICIES, REPLICA_WEIGHT, ROUTING_METHODS, AllDownPolicy, Registry, Replica, Topology, Zone

Registries = dict[str, Registry | None]  # every name listed; None where that registry is invalid


def registries_section(r: Reader, node: Node | None, zone: Zone | None, topology: Topology | None,
                       missing_latency: RegionPairs) -> Registries:
    """missing_latency: the region pairs latency_ms leaves out (topology_section)."""
    result: Registries = {}
    m = r.mapping(node, open_keys=True, what="a mapping of registry name: settings")
    if m is None:
        return result
    if not m.entries:
        r.fail(m, "define at least one registry")
    for name, reg_node in m:
        key_node = Scalar(m.key_mark(name), reg_node.path, name)
        valid_name = r.label(key_node, name, "registry name")
        if name in names.RESERVED_LABELS:
            r.fail(key_node, f"registry name {name!r} is reserved for geotm's own names "
                             f"({', '.join(sorted(names.RESERVED_LABELS))})")
            valid_name = False
        registry = _registry(r, name, reg_node, zone, topology, missing_latency)
        result[name] = registry if valid_name else None
    return result


def _registry(r: Reader, name: str, node: Node, zone: Zone | None, topology: Topology | None,
              missing_latency: RegionPairs) -> Registry | None:
    m = r.mapping(node, keys.REGISTRY, required=("replicas",))
    if m is None:
        return None
    routing = r.choice(m.get("routing"), ROUTING_METHODS, "performance")
    replicas: list[Replica] = []
    replicas_node = r.mapping(m.get("replicas"), open_keys=True, what="a mapping of replica name: settings")
    for index, (replica_name, replica_node) in enumerate(replicas_node or ()):
        replica = _replica(r, name, replica_name, replica_node, replicas_node, index, zone, topology)
        if replica is not None:
            replicas.append(replica)
    if replicas_node is not None and not replicas_node.entries:
        r.fail(replicas_node, "a registry needs at least one replica")
    all_down = _all_down(r, m.get("all_down"), {rep.name for rep in replicas})
    if replicas and not any(rep.global_routing for rep in replicas):
        r.fail(replicas_node, f"registry {name!r} has no replica with global_routing on: "
                              "its global name would have nowhere to go")
    if routing == "performance" and topology is not None:
        _check_performance_inputs(r, m, replicas, topology, missing_latency)
    if routing == "weighted" and replicas and all(rep.weight == 0 for rep in replicas if rep.global_routing):
        r.fail(replicas_node, "weighted routing needs at least one globally routed replica with weight > 0")
    regional_endpoints = r.boolean(m.get("regional_endpoints"), True)
    data_endpoints = r.boolean(m.get("data_endpoints"), True)
    if (None in (routing, all_down, replicas_node, regional_endpoints, data_endpoints)
            or len(replicas) != len(replicas_node.entries)):
        return None
    return Registry(name=name, routing=routing, all_down=all_down, regional_endpoints=regional_endpoints,
                    data_endpoints=data_endpoints, replicas=tuple(replicas))


def _check_performance_inputs(r: Reader, m: Map, replicas: list[Replica], topology: Topology,
                              missing_latency: RegionPairs) -> None:
    if topology.default_region is None:
        r.fail(m.get("routing") or m, "performance routing needs clients.default_region "
                                      "for clients outside every client network")
    locations = {rep.location for rep in replicas}
    client_regions = set(topology.regions)
    missing = sorted({tuple(sorted(pair)) for pair in missing_latency
                      if pair[1] in locations and pair[0] in client_regions})
    if missing:
        shown = ", ".join(f"{a}<->{b}" for a, b in missing[:6]) + (" ..." if len(missing) > 6 else "")
        r.fail(m.get("routing") or m, f"performance routing needs latency_ms between every region "
                                      f"and each replica location; missing: {shown}")


def _replica(r: Reader, registry: str, name: str, node: Node, parent: Map, index: int,
             zone: Zone | None, topology: Topology | None) -> Replica | None:
    key_node = Scalar(parent.key_mark(name), node.path, name)
    valid = r.label(key_node, name, "replica name")
    m = r.mapping(node, keys.REPLICA)
    if m is None:
        return None
    location_node = m.get("location") or key_node
    location = r.string(location_node)
    if location is not None and topology is not None and location not in topology.regions:
        where = "location names" if m.get("location") else f"replica {name!r} has no location and its name is an"
        unknown_region(r, location_node, location, set(topology.regions), where)
        location = None
    zone_name = zone.name if zone else None
    host_text = r.string(m.get("host"))
    host = (absolute_name(host_text, zone_name) if host_text
            else names.default_replica_host(registry, name, zone_name or "invalid"))
    addresses = [a for a in (r.address(n) for n in r.one_or_many(m.get("addresses"))) if a is not None]
    in_zone = zone_name is not None and names.is_subdomain(host, zone_name)
    if in_zone and not addresses and m.get("addresses") is None:
        r.fail(m, f"replica host {host!r} is in our zone, so list its addresses "
                  "(or set host to the replica's own external name)")
    if not in_zone and m.get("addresses") is not None and zone_name is not None:
        r.fail(m.get("addresses"), f"host {host!r} is outside zone {zone_name!r}: its addresses are "
                                   "served by its own DNS, remove them here")
    weight = r.integer(m.get("weight"), 0, 1_000_000, REPLICA_WEIGHT)
    priority = r.integer(m.get("priority"), 0, 1_000_000, index + 1)
    global_routing = r.boolean(m.get("global_routing"), True)
    probe_node = m.get("probe")
    probe = probe_spec(r, probe_node, addresses) if probe_node is not None else None
    if (not valid or location is None or weight is None or priority is None or global_routing is None
            or (probe_node is not None and probe is None)):
        return None
    return Replica(name=name, location=location, host=host, addresses=tuple(addresses) if in_zone else (),
                   weight=weight, priority=priority, global_routing=global_routing, probe=probe)


def _all_down(r: Reader, node: Node | None, replica_names: set[str]) -> AllDownPolicy | None:
    if node is None:
        return AllDownPolicy("fail_open")
    if isinstance(node, Scalar):
        mode = r.choice(node, ("fail_open", "servfail"))
        if mode == "fallback":
            return None
        return AllDownPolicy(mode) if mode else None
    m = r.mapping(node, keys.ALL_DOWN, required=("policy",),
                  what="fail_open, servfail, or {policy: fallback, replica: NAME}")
    if m is None:
        return None
    mode = r.choice(m.get("policy"), ALL_DOWN_POLICIES)
    replica = r.string(m.get("replica"))
    if mode == "fallback":
        if replica is None:
            r.fail(m, "policy fallback needs 'replica': the replica that takes all traffic")
            return None
        if replica_names and replica not in replica_names:
            r.fail(m.get("replica"), f"fallback replica {replica!r} is not a replica of this registry "
                                     f"(replicas: {', '.join(sorted(replica_names))})")
            return None
    elif replica is not None and mode is not None:
        r.fail(m.get("replica"), f"'replica' applies only to policy fallback, not {mode}")
    return AllDownPolicy(mode, replica) if mode else None


def check_replica_hosts(r: Reader, node: Node, registries: Registries) -> None:
    """Each replica host belongs to one replica. node: the registries section, where a clash is shown."""
    hosts: dict[str, str] = {}
    for reg in registries.values():
        for rep in (reg.replicas if reg else ()):
            owner = f"{reg.name}.{rep.name}"
            if rep.host in hosts and hosts[rep.host] != owner:
                r.fail(node, f"replica host {rep.host!r} is used by both {hosts[rep.host]} and {owner}")
            hosts.setdefault(rep.host, owner)
