"""The validated config as frozen values: Zone, Registry, Replica, Topology, View. No I/O, no runtime state."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from dnsd.records import RR

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ROUTING_METHODS = ("performance", "weighted", "priority")
ALL_DOWN_POLICIES = ("fail_open", "fallback", "servfail")


def frozen_map(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class Soa:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    negative_ttl: int  # the SOA MINIMUM field: how long resolvers cache NXDOMAIN/NODATA (RFC 2308)
    ttl: int


@dataclass(frozen=True, slots=True)
class NameTTLs:
    """TTL per kind of generated name (see dnsd.names)."""

    global_name: int = 300
    privatelink: int = 300
    traffic_manager: int = 30
    regional: int = 300
    data: int = 300
    replica: int = 10
    private: int = 10


@dataclass(frozen=True, slots=True)
class Zone:
    name: str  # canonical: lower case, no trailing dot
    soa: Soa
    nameservers: tuple[str, ...]
    ns_ttl: int
    ttls: NameTTLs
    records: tuple[RR, ...]  # static records, served as given


@dataclass(frozen=True, slots=True)
class Replica:
    name: str  # DNS label, used in regional/data names
    location: str  # a region of Topology.regions
    host: str  # the name the traffic-manager hop points at (in zone: we serve its addresses)
    addresses: tuple[IPAddress, ...]  # empty when host is outside our zone
    weight: int
    priority: int  # lower is preferred
    global_routing: bool  # False: skipped for the global name, regional/data names still answer


@dataclass(frozen=True, slots=True)
class AllDownPolicy:
    """What the global name answers when every globally routed replica is degraded."""

    mode: str  # fail_open: answer as if all were healthy; fallback: always `replica`; servfail
    replica: str | None = None


@dataclass(frozen=True, slots=True)
class Registry:
    name: str
    routing: str  # one of ROUTING_METHODS
    all_down: AllDownPolicy
    regional_endpoints: bool
    data_endpoints: bool
    replicas: tuple[Replica, ...]

    def replica(self, name: str) -> Replica:
        for replica in self.replicas:
            if replica.name == name:
                return replica
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class ClientNetwork:
    network: IPNetwork
    region: str


@dataclass(frozen=True, slots=True)
class Topology:
    """Where clients are and how far regions are from each other: the inputs of performance routing."""

    regions: tuple[str, ...]
    latency_ms: Mapping[tuple[str, str], float]  # symmetric, (a, a) = 0
    client_networks: tuple[ClientNetwork, ...]
    default_region: str | None  # for clients in no client network

    def latency(self, a: str, b: str) -> float:
        return self.latency_ms[(a, b)]


@dataclass(frozen=True, slots=True)
class PrivateEndpoints:
    """One registry's private IPs inside one VNet: 1 global + N data + N regional."""

    global_addresses: tuple[IPAddress, ...]
    data: Mapping[str, tuple[IPAddress, ...]]  # replica name -> addresses
    regional: Mapping[str, tuple[IPAddress, ...]]


@dataclass(frozen=True, slots=True)
class View:
    name: str
    sources: tuple[IPNetwork, ...]  # client source addresses or ECS subnets inside the VNet
    endpoints: Mapping[str, PrivateEndpoints]  # registry name -> its private IPs here


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 5353),)
    edns_udp_size: int = 1232
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1024


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # file it was loaded from
    digest: str  # sha256 of the file text: the running config's version
    server: ServerSettings
    zone: Zone
    topology: Topology
    registries: tuple[Registry, ...]
    views: tuple[View, ...] = field(default=())

    def registry(self, name: str) -> Registry:
        for registry in self.registries:
            if registry.name == name:
                return registry
        raise KeyError(name)
