"""The bench's model of what geotm serves for a config (built through dnsd.config, names through
dnsd.names), the addresses its queries come from, the dnsperf query file in the stated mix, and the
bench's log line. Pure (no processes, no network); peerconfig.py writes the servers' configs from
it, tests/test_bench_static.py checks both without any peer installed."""
from __future__ import annotations

import ipaddress
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dnsd import names
from dnsd.records import normalize_name, type_name
from dnsd.config import load_config
from dnsd.model import NameTTLs

ECS_SUBNET = "203.0.113.0/24"     # a client network geotm maps to southeastasia
VNET_SOURCE = "127.0.0.70"        # inside geotm's corp-vnet view (127.0.0.64/26)
BENCH_CLIENT = "127.0.0.1"        # where dnsperf and dig send from


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The names geotm serves for a config (config/example.yaml), as a small model every generator works from.


@dataclass(frozen=True)
class Replica:
    name: str
    addresses: tuple[str, ...]
    weight: int
    host: str                                  # the name the traffic-manager hop points at (absolute)


@dataclass(frozen=True)
class Registry:
    name: str
    replicas: tuple[Replica, ...]


@dataclass
class ZoneModel:
    zone: str                                  # "azurecr.test" (no trailing dot)
    soa_mname: str                             # relative to the zone, like every name below
    soa_rname: str
    soa_refresh: int
    soa_retry: int
    soa_expire: int
    soa_negative_ttl: int
    soa_ttl: int
    nameservers: tuple[str, ...]
    ns_ttl: int
    ttls: NameTTLs
    registries: tuple[Registry, ...]
    records: list[tuple[str, str, int, str]] = field(default_factory=list)  # (owner, type, ttl, rdata)
    # the replica a loopback client gets from geotm's performance routing (its default region)
    default_replica: str = ""

    def fqdn(self, rel: str) -> str:
        """An absolute name (trailing dot) for a name relative to the zone ('@' is the apex)."""
        if rel in ("@", ""):
            return self.zone + "."
        if rel.endswith("."):
            return rel
        return f"{rel}.{self.zone}."

    def relative(self, name: str) -> str:
        """A name as a zone file writes it: '@' for the apex, relative below it, else absolute (dot)."""
        name = normalize_name(name)
        if name == self.zone:
            return "@"
        if name.endswith("." + self.zone):
            return name[: -len(self.zone) - 1]
        return name + "."

    def replica(self, reg: str, rep: str) -> Replica:
        return next(p for r in self.registries if r.name == reg for p in r.replicas if p.name == rep)

    # the generated names (dnsd.names), relative to the zone
    def global_name(self, reg: str) -> str:
        return self.relative(names.global_name(reg, self.zone))

    def privatelink_name(self, reg: str) -> str:
        return self.relative(names.privatelink_name(reg, self.zone))

    def tm_name(self, reg: str) -> str:
        return self.relative(names.traffic_manager_name(reg, self.zone))

    def replica_host(self, reg: str, rep: str) -> str:
        return self.relative(self.replica(reg, rep).host)

    def regional_name(self, reg: str, rep: str) -> str:
        return self.relative(names.regional_name(reg, rep, self.zone))

    def data_name(self, reg: str, rep: str) -> str:
        return self.relative(names.data_name(reg, rep, self.zone))


def load_model(config_path: str | Path) -> ZoneModel:
    """The parts of a geotm config the peers need to serve the same names, read and validated by
    dnsd.config (so every default is geotm's own)."""
    config = load_config(config_path)
    zone = config.zone
    model = ZoneModel(zone=zone.name, soa_mname="", soa_rname="", soa_refresh=zone.soa.refresh,
                      soa_retry=zone.soa.retry, soa_expire=zone.soa.expire,
                      soa_negative_ttl=zone.soa.negative_ttl, soa_ttl=zone.soa.ttl, nameservers=(),
                      ns_ttl=zone.ns_ttl, ttls=zone.ttls, registries=())
    model.soa_mname, model.soa_rname = model.relative(zone.soa.mname), model.relative(zone.soa.rname)
    model.nameservers = tuple(model.relative(ns) for ns in zone.nameservers)
    model.registries = tuple(
        Registry(reg.name, tuple(Replica(rep.name, tuple(str(a) for a in rep.addresses), rep.weight, rep.host)
                                 for rep in reg.replicas))
        for reg in config.registries)
    model.records = [(model.relative(rr.name), type_name(rr.rtype), rr.ttl, rr.rdata.to_text())
                     for rr in zone.records]
    # the bench client's region: its longest matching client network, else the default region; the
    # nearest replica is the one located there
    client = ipaddress.ip_address(BENCH_CLIENT)
    matching = [n for n in config.topology.client_networks if client in n.network]
    region = (max(matching, key=lambda n: n.network.prefixlen).region if matching
              else config.topology.default_region)
    if config.registries:
        first = config.registries[0]
        model.default_replica = next((rep.name for rep in first.replicas if rep.location == region),
                                     first.replicas[0].name)
    return model


# --------------------------------------------------------------------------------------------
# Query file (dnsperf format: "NAME TYPE" per line)

MIX = {"global_a": 0.60, "regional_data_a": 0.25, "aaaa_nodata": 0.10, "nxdomain": 0.05}


def query_lines(m: ZoneModel, total: int = 2000, seed: int = 7) -> list[str]:
    """`total` queries in the stated mix, shuffled with a fixed seed:
    60% global A, 25% regional/data A (spread over every replica), 10% AAAA of the global name
    (the CNAME chain, then NODATA), 5% NXDOMAIN (names under the zone that do not exist)."""
    counts = {k: int(round(v * total)) for k, v in MIX.items()}
    counts["global_a"] += total - sum(counts.values())
    lines: list[str] = []
    regs = m.registries
    for i in range(counts["global_a"]):
        r = regs[i % len(regs)].name
        lines.append(f"{m.fqdn(m.global_name(r))} A")
    rd = [(r.name, p.name, kind) for r in regs for p in r.replicas for kind in ("geo", "data")]
    for i in range(counts["regional_data_a"]):
        reg, rep, kind = rd[i % len(rd)]
        name = m.regional_name(reg, rep) if kind == "geo" else m.data_name(reg, rep)
        lines.append(f"{m.fqdn(name)} A")
    for i in range(counts["aaaa_nodata"]):
        r = regs[i % len(regs)].name
        lines.append(f"{m.fqdn(m.global_name(r))} AAAA")
    for i in range(counts["nxdomain"]):
        lines.append(f"{m.fqdn(f'nx{i % 50}')} A")
    random.Random(seed).shuffle(lines)
    return lines


def classify_query(m: ZoneModel, line: str) -> str:
    """Which mix class a query line belongs to (the inverse of query_lines, for the test)."""
    name, qtype = line.split()
    rel = m.relative(name)
    globals_ = {m.global_name(r.name) for r in m.registries}
    if qtype == "AAAA":
        return "aaaa_nodata"
    if rel in globals_:
        return "global_a"
    for r in m.registries:
        for p in r.replicas:
            if rel in (m.regional_name(r.name, p.name), m.data_name(r.name, p.name)):
                return "regional_data_a"
    return "nxdomain"


def ecs_option_hex(subnet: str) -> str:
    """EDNS Client Subnet option value (RFC 7871) as hex, for `dnsperf -E 8:HEX`:
    FAMILY(2) SOURCE-PREFIX(1) SCOPE-PREFIX(1)=0 ADDRESS (only the bytes the prefix covers)."""
    net = ipaddress.ip_network(subnet, strict=False)
    family = 1 if net.version == 4 else 2
    nbytes = math.ceil(net.prefixlen / 8)
    addr = net.network_address.packed[:nbytes]
    return (family.to_bytes(2, "big") + bytes([net.prefixlen, 0]) + addr).hex()
