"""The names the zone serves, per view: static RRsets, CNAMEs and traffic-manager hops, built from the config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from dnsd import names
from dnsd import records
from dnsd.model import Config, IPAddress, Registry
from dnsd.records import RR, AddressRdata, NameRdata, SoaRdata

PUBLIC_VIEW = 0  # index of the view every client outside the VNet views sees


@dataclass(frozen=True, slots=True)
class StaticNode:
    rrsets: Mapping[int, tuple[RR, ...]]  # rtype -> records
    kind: str  # what the name is, for explain: "apex", "replica host", "private endpoint", "record"


@dataclass(frozen=True, slots=True)
class AliasNode:
    rr: RR  # the CNAME record
    kind: str  # "global name", "regional name", ...


@dataclass(frozen=True, slots=True)
class TrafficManagerNode:
    """The hop whose CNAME target is chosen per client and health: <registry>.tm.<zone>."""

    owner: str
    registry_index: int
    ttl: int
    kind: str = "traffic-manager name"


Node = StaticNode | AliasNode | TrafficManagerNode


@dataclass(frozen=True, slots=True)
class ZoneData:
    config: Config
    zone: str
    views: tuple[str, ...]  # view names; index 0 is "public"
    public: Mapping[str, Node]
    overrides: tuple[Mapping[str, Node], ...]  # per view index; [0] is empty
    empty_non_terminals: frozenset[str]  # names with nothing of their own but names below: NODATA, not NXDOMAIN
    soa: RR

    def node(self, view: int, name: str) -> Node | None:
        override = self.overrides[view].get(name)
        return override if override is not None else self.public.get(name)

    def all_names(self) -> set[str]:
        result = set(self.public)
        for override in self.overrides:
            result.update(override)
        return result


def _address_rrs(owner: str, ttl: int, addresses: tuple[IPAddress, ...]) -> dict[int, tuple[RR, ...]]:
    rrsets: dict[int, list[RR]] = {}
    for address in addresses:
        rtype = records.A if address.version == 4 else records.AAAA
        rrsets.setdefault(rtype, []).append(RR(owner, rtype, ttl, AddressRdata(address)))
    return {rtype: tuple(rrs) for rtype, rrs in rrsets.items()}


def _alias(owner: str, target: str, ttl: int, kind: str) -> AliasNode:
    return AliasNode(RR(owner, records.CNAME, ttl, NameRdata(target)), kind)


def build_zone_data(config: Config) -> ZoneData:
    zone = config.zone
    z = zone.name
    ttl = zone.ttls
    soa = RR(z, records.SOA, zone.soa.ttl, SoaRdata(zone.soa.mname, zone.soa.rname, zone.soa.serial,
                                                  zone.soa.refresh, zone.soa.retry, zone.soa.expire,
                                                  zone.soa.negative_ttl))
    static: dict[str, dict[int, list[RR]]] = {z: {records.SOA: [soa]}}
    static[z][records.NS] = [RR(z, records.NS, zone.ns_ttl, NameRdata(ns)) for ns in zone.nameservers]
    for rr in zone.records:
        static.setdefault(rr.name, {}).setdefault(rr.rtype, []).append(rr)
    public: dict[str, Node] = {}
    for owner, rrsets in static.items():
        frozen = {rtype: tuple(rrs) for rtype, rrs in rrsets.items()}
        if records.CNAME in frozen:
            public[owner] = AliasNode(frozen[records.CNAME][0], "record")
        else:
            public[owner] = StaticNode(frozen, "apex" if owner == z else "record")

    with_private = {name for view in config.views for name in view.endpoints}
    for index, reg in enumerate(config.registries):
        public.update(_public_registry_nodes(reg, index, z, ttl, reg.name in with_private))

    overrides: list[Mapping[str, Node]] = [{}]
    for view in config.views:
        nodes: dict[str, Node] = {}
        for reg_name, endpoints in view.endpoints.items():
            reg = config.registry(reg_name)
            nodes[names.privatelink_name(reg.name, z)] = StaticNode(
                _address_rrs(names.privatelink_name(reg.name, z), ttl.private, endpoints.global_addresses),
                "private endpoint (global)")
            for rep in reg.replicas:
                for enabled, public_name, private_name, addresses, ttl_kind, kind in (
                        (reg.regional_endpoints, names.regional_name, names.regional_private_name,
                         endpoints.regional, ttl.regional, "regional"),
                        (reg.data_endpoints, names.data_name, names.data_private_name,
                         endpoints.data, ttl.data, "data")):
                    if not enabled:
                        continue
                    private = private_name(reg.name, rep.name, z)
                    nodes[public_name(reg.name, rep.name, z)] = _alias(
                        public_name(reg.name, rep.name, z), private, ttl_kind, f"{kind} name (VNet view)")
                    nodes[private] = StaticNode(_address_rrs(private, ttl.private, addresses[rep.name]),
                                                f"private endpoint ({kind}, {rep.name})")
        overrides.append(nodes)

    every_name = set(public)
    for nodes in overrides:
        every_name.update(nodes)
    ents = set()
    for name in every_name:
        while name != z and names.is_subdomain(name, z):
            name = name.split(".", 1)[1]
            if name not in every_name:
                ents.add(name)
    return ZoneData(config=config, zone=z, views=("public",) + tuple(v.name for v in config.views),
                    public=public, overrides=tuple(overrides), empty_non_terminals=frozenset(ents), soa=soa)


def _public_registry_nodes(reg: Registry, index: int, z: str, ttl, has_private: bool) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    tm = names.traffic_manager_name(reg.name, z)
    if has_private:
        # Like Azure: the global name always goes through privatelink when private endpoints exist,
        # so a VNet view only has to override the privatelink name.
        nodes[names.global_name(reg.name, z)] = _alias(names.global_name(reg.name, z),
                                                       names.privatelink_name(reg.name, z), ttl.global_name,
                                                       "global name")
        nodes[names.privatelink_name(reg.name, z)] = _alias(names.privatelink_name(reg.name, z), tm,
                                                            ttl.privatelink, "privatelink name (public view)")
    else:
        nodes[names.global_name(reg.name, z)] = _alias(names.global_name(reg.name, z), tm, ttl.global_name,
                                                       "global name")
    nodes[tm] = TrafficManagerNode(tm, index, ttl.traffic_manager)
    for rep in reg.replicas:
        if rep.addresses:
            nodes[rep.host] = StaticNode(_address_rrs(rep.host, ttl.replica, rep.addresses),
                                         f"replica host ({reg.name} {rep.name})")
        for enabled, public_name, private_name, ttl_kind, kind in (
                (reg.regional_endpoints, names.regional_name, names.regional_private_name, ttl.regional, "regional"),
                (reg.data_endpoints, names.data_name, names.data_private_name, ttl.data, "data")):
            if not enabled:
                continue
            owner = public_name(reg.name, rep.name, z)
            nodes[owner] = _alias(owner, rep.host, ttl_kind, f"{kind} name ({rep.name})")
            if has_private:
                private = private_name(reg.name, rep.name, z)
                nodes[private] = _alias(private, rep.host, ttl_kind, f"private {kind} name (public view)")
    return nodes
