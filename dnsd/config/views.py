"""The views section: per VNet, the sources that choose it, the resolvers whose ECS may choose it, and
each registry's private endpoint IPs there, checked against the registries."""
from __future__ import annotations

from dnsd.config import keys
from dnsd.config.reader import Reader
from dnsd.config.registries import Registries
from dnsd.config.yamlnodes import Node, Scalar
from dnsd.model import PrivateEndpoints, Registry, View, frozen_map


def views_section(r: Reader, node: Node | None, registries: Registries) -> list[View]:
    result: list[View] = []
    m = r.mapping(node, open_keys=True, what="a mapping of view name: settings")
    seen_sources: dict[object, str] = {}
    for name, view_node in m or ():
        vm = r.mapping(view_node, keys.VIEW, required=("sources", "private_endpoints"))
        if vm is None:
            continue
        sources = []
        for item in r.sequence(vm.get("sources"), "a list of CIDRs"):
            network = r.network(item)
            if network is None:
                continue
            if network in seen_sources:
                r.fail(item, f"source {network} is already in view {seen_sources[network]!r}: "
                             "a client must map to one view")
            seen_sources[network] = name
            sources.append(network)
        trusted = []
        for item in r.sequence(vm.get("trusted_resolvers"), "a list of CIDRs"):
            network = r.network(item)
            if network is not None and network.prefixlen == 0:
                # ECS from a trusted resolver chooses the view: trusting everyone leaks the VNet
                r.fail(item, f"trusted resolver {network} is every address: list only the "
                             "resolvers that serve this VNet and send its clients' subnets as ECS")
            elif network is not None:
                trusted.append(network)
        endpoints = {}
        ep_map = r.mapping(vm.get("private_endpoints"), open_keys=True,
                           what="a mapping of registry name: private IPs")
        for reg_name, ep_node in ep_map or ():
            if reg_name not in registries:
                key_node = Scalar(ep_map.key_mark(reg_name), ep_node.path, reg_name)
                r.fail(key_node, f"unknown registry {reg_name!r} "
                                 f"(registries: {', '.join(sorted(registries)) or 'none'})")
                continue
            registry = registries[reg_name]
            private = _private_endpoints(r, ep_node, registry) if registry else None
            if private is not None:
                endpoints[reg_name] = private
        extra = {"trusted_resolvers": tuple(trusted)} if vm.get("trusted_resolvers") is not None else {}
        result.append(View(name=name, sources=tuple(sources), endpoints=frozen_map(endpoints), **extra))
    return result


def _private_endpoints(r: Reader, node: Node, registry: Registry) -> PrivateEndpoints | None:
    m = r.mapping(node, keys.PRIVATE_ENDPOINTS, required=("global",))
    if m is None:
        return None
    global_addresses = tuple(a for a in (r.address(n) for n in r.one_or_many(m.get("global"))) if a)
    replicas = [rep.name for rep in registry.replicas]
    per_replica = {}
    for key, enabled in (("data", registry.data_endpoints), ("regional", registry.regional_endpoints)):
        sub = m.get(key)
        if not enabled:
            if sub is not None:
                r.fail(sub, f"registry {registry.name!r} has {key}_endpoints off, "
                            f"so it has no private {key} IPs to give")
            per_replica[key] = {}
            continue
        if sub is None:
            r.fail(m, f"registry {registry.name!r} has {key}_endpoints on: give private '{key}' IPs "
                      f"for every replica ({', '.join(replicas)})")
            per_replica[key] = {}
            continue
        sm = r.mapping(sub, open_keys=True, what="a mapping of replica name: private IPs")
        found = {}
        for rep_name, ip_node in sm or ():
            if rep_name not in replicas:
                r.fail(ip_node, f"unknown replica {rep_name!r} of registry {registry.name!r} "
                                f"(replicas: {', '.join(replicas)})")
                continue
            found[rep_name] = tuple(a for a in (r.address(n) for n in r.one_or_many(ip_node)) if a)
        missing = [name for name in replicas if name not in found]
        if sm is not None and missing:
            r.fail(sub, f"no private {key} IP for replica{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)} of registry {registry.name!r}")
        per_replica[key] = found
    return PrivateEndpoints(global_addresses=global_addresses, data=frozen_map(per_replica["data"]),
                            regional=frozen_map(per_replica["regional"]))
