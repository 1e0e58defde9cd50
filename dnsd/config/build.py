"""Validate a located YAML tree against geotm's schema and build the frozen model; all problems raised at once."""
from __future__ import annotations

import hashlib
import ipaddress
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from dnsd import names
from dnsd.answers import records
from dnsd.config.errors import ConfigError, Mark, Problem, Problems
from dnsd.config.reader import Reader
from dnsd.common.hostport import parse_host_port
from dnsd.config.yamlnodes import Map, Node, Scalar, parse_yaml, read_text
from dnsd.model import (ALL_DOWN_POLICIES, PROBE_KINDS, ROUTING_METHODS, AllDownPolicy, ClientNetwork,
                        AdminSettings, Config, FeedAccess, HealthFeedSettings, NameTTLs, PrivateEndpoints, ProbeCheck, ProbeSpec,
                        ProbesSettings, RateLimitSettings, Registry, Replica, ServerSettings, Soa, StatusRange, Topology,
                        View, Webhook, Zone, frozen_map)
from dnsd.answers.records import RR, normalize_name

TCP_LIMIT_KEYS = ("tcp_idle_timeout_under_load", "tcp_max_connections_per_source", "tcp_source_prefix_v4",
                  "tcp_source_prefix_v6", "fd_reserve")
TOP_KEYS = ("server", "zone", "regions", "latency_ms", "clients", "registries", "views", "probes", "health", "admin")
PROBE_TIMING_KEYS = ("interval", "jitter", "timeout", "fall", "rise")
CHECK_KEYS = ("kind", "address", "port", "scheme", "host_header", "path", "method", "headers", "expect_status",
              "body_contains", "json_path", "json_equals", "tls_verify", "ca_file", "canary_manifest",
              "canary_blob", "write_canary", "components")


def load_config(path: str | Path) -> Config:
    """Read, validate and build. Raises ConfigError listing every problem, or OSError if unreadable."""
    path = Path(path)
    text = read_text(path)
    return parse_config_text(text, str(path), path.parent)


def parse_config_text(text: str, filename: str = "<config>", base_dir: str | Path | None = None) -> Config:
    """base_dir: where relative file paths in the config point (the config file's folder);
    None leaves them relative to the working directory."""
    root = parse_yaml(text, filename)
    problems = Problems()
    if root is None:
        raise ConfigError([Problem(Mark(filename, 1, 1), "", "the config is empty")])
    builder = _Builder(Reader(problems), filename, base_dir)
    config = builder.build(root, hashlib.sha256(text.encode()).hexdigest())
    problems.raise_if_any()
    assert config is not None
    return config


def load_admin_settings(path: str | Path) -> AdminSettings:
    """Only the admin section: how CLI commands reach a running dnsd, even when the rest of the file
    is broken (`dnsd reload` must still be able to ask the server, which reports every problem)."""
    path = Path(path)
    root = parse_yaml(read_text(path), str(path))
    problems = Problems()
    node = root.get("admin") if isinstance(root, Map) else None
    settings = _Builder(Reader(problems), str(path), path.parent).admin_settings(node)
    problems.raise_if_any()
    assert settings is not None
    return settings


def parse_listen(text: str, default_port: int = 5353) -> tuple[str, int]:
    """A listen address: an IP (not a name, so we bind what the operator meant) and a port."""
    return parse_host_port(text, default_port, require_ip=True)


class _Builder:
    def __init__(self, reader: Reader, filename: str, base_dir: str | Path | None = None):
        self.r = reader
        self.filename = filename
        self.base_dir = os.path.abspath(base_dir) if base_dir is not None else None

    def build(self, root: Node, digest: str) -> Config | None:
        r = self.r
        top = r.mapping(root, TOP_KEYS, required=("zone", "registries"), what="the config (a mapping)")
        if top is None:
            return None
        server = self.server(top.get("server"))
        zone = self.zone(top.get("zone"))
        topology = self.topology(top)
        registries = self.registries(top.get("registries"), zone, topology)
        views = self.views(top.get("views"), registries)
        probes = self.probes_settings(top.get("probes"))
        health = self.health_settings(top.get("health"))
        admin = self.admin_settings(top.get("admin"))
        if zone is not None:
            self.check_collisions(top, zone, registries)
        if None in (server, zone, topology, probes, health, admin):
            return None
        return Config(source=self.filename, digest=digest, server=server, zone=zone, topology=topology,
                      registries=tuple(reg for reg in registries.values() if reg is not None),
                      views=tuple(views), probes=probes, health=health, admin=admin)

    # -- server ------------------------------------------------------------------------------

    def server(self, node: Node | None) -> ServerSettings | None:
        r = self.r
        if node is None:
            return ServerSettings()
        m = r.mapping(node, ("listen", "edns_udp_size", "tcp_idle_timeout", "tcp_max_connections",
                             *TCP_LIMIT_KEYS, "rate_limit"))
        if m is None:
            return None
        rate_limit = self.rate_limit(m.get("rate_limit"))
        listen = []
        for item in r.one_or_many(m.get("listen")):
            parsed = r.scalar(item, lambda v: parse_listen(str(v)), "HOST:PORT like 127.0.0.1:5353 or [::1]:53")
            if parsed:
                listen.append(parsed)
        defaults = ServerSettings()
        idle = r.duration(m.get("tcp_idle_timeout"), defaults.tcp_idle_timeout, 0.1) or 10.0
        return ServerSettings(
            listen=tuple(listen) or defaults.listen,
            edns_udp_size=r.integer(m.get("edns_udp_size"), 512, 4096, defaults.edns_udp_size) or 1232,
            tcp_idle_timeout=idle,
            tcp_max_connections=r.integer(m.get("tcp_max_connections"), 1, 1_000_000,
                                          defaults.tcp_max_connections) or 1024,
            rate_limit=rate_limit,
            **self.tcp_limits(m, defaults, idle),
        )

    def tcp_limits(self, m: dict[str, Node], defaults: ServerSettings, idle: float) -> dict:
        """server.tcp_*: per-source cap and the short idle timeout under load; fd_reserve."""
        r = self.r
        under_load = r.duration(m.get("tcp_idle_timeout_under_load"), defaults.tcp_idle_timeout_under_load,
                                0.01) or defaults.tcp_idle_timeout_under_load
        node = m.get("tcp_idle_timeout_under_load")
        if node is not None and under_load > idle:
            r.fail(node, f"must not be longer than tcp_idle_timeout ({idle:g}s), got {under_load:g}s")
        prefix_v4 = r.integer(m.get("tcp_source_prefix_v4"), 0, 32, defaults.tcp_source_prefix_v4)
        prefix_v6 = r.integer(m.get("tcp_source_prefix_v6"), 0, 128, defaults.tcp_source_prefix_v6)
        return dict(
            tcp_idle_timeout_under_load=under_load,
            tcp_max_connections_per_source=r.integer(
                m.get("tcp_max_connections_per_source"), 1, 1_000_000,
                defaults.tcp_max_connections_per_source) or defaults.tcp_max_connections_per_source,
            tcp_source_prefix_v4=prefix_v4 if prefix_v4 is not None else defaults.tcp_source_prefix_v4,
            tcp_source_prefix_v6=prefix_v6 if prefix_v6 is not None else defaults.tcp_source_prefix_v6,
            fd_reserve=r.integer(m.get("fd_reserve"), 16, 1_000_000, defaults.fd_reserve) or defaults.fd_reserve,
        )

    def rate_limit(self, node: Node | None) -> RateLimitSettings | None:
        """server.rate_limit: absent means off; a mapping (even empty) turns it on with the defaults."""
        r = self.r
        m = r.mapping(node, ("responses_per_second", "nxdomains_per_second", "errors_per_second", "slip",
                             "ipv4_prefix_length", "ipv6_prefix_length", "exempt", "table_size"))
        if m is None:
            return None
        d = RateLimitSettings()
        exempt = [r.network(item) for item in r.one_or_many(m.get("exempt"))]
        values = dict(
            responses_per_second=r.integer(m.get("responses_per_second"), 1, 1_000_000, d.responses_per_second),
            slip=r.integer(m.get("slip"), 0, 10, d.slip),
            ipv4_prefix_length=r.integer(m.get("ipv4_prefix_length"), 8, 32, d.ipv4_prefix_length),
            ipv6_prefix_length=r.integer(m.get("ipv6_prefix_length"), 16, 128, d.ipv6_prefix_length),
            table_size=r.integer(m.get("table_size"), 1_000, 10_000_000, d.table_size),
        )
        optional = dict(
            nxdomains_per_second=r.integer(m.get("nxdomains_per_second"), 1, 1_000_000, d.nxdomains_per_second),
            errors_per_second=r.integer(m.get("errors_per_second"), 1, 1_000_000, d.errors_per_second),
        )
        if None in values.values() or None in exempt or any(
                m.get(key) is not None and value is None for key, value in optional.items()):
            return None
        return RateLimitSettings(exempt=tuple(exempt), **values, **optional)  # type: ignore[arg-type]

    # -- zone --------------------------------------------------------------------------------

    def zone(self, node: Node | None) -> Zone | None:
        r = self.r
        m = r.mapping(node, ("name", "soa", "nameservers", "ns_ttl", "ttl", "records"),
                      required=("name", "soa", "nameservers"))
        if m is None:
            return None
        name_node = m.get("name")
        zone_name = r.string(name_node)
        if zone_name is not None:
            zone_name = normalize_name(zone_name)
            if not zone_name or not all(r.label(name_node, label, "zone label") for label in zone_name.split(".")):
                zone_name = None
        soa = self.soa(m.get("soa"), zone_name)
        nameservers = []
        for item in r.sequence(m.get("nameservers")):
            text = r.string(item)
            if text:
                nameservers.append(self.absolute(text, zone_name))
        if m.get("nameservers") is not None and not nameservers:
            r.fail(m.get("nameservers"), "list at least one nameserver")
        ttls = self.name_ttls(m.get("ttl"))
        static = self.static_records(m.get("records"), zone_name)
        if zone_name is None or soa is None or ttls is None:
            return None
        zone = Zone(name=zone_name, soa=soa, nameservers=tuple(nameservers),
                    ns_ttl=r.ttl(m.get("ns_ttl"), 3600) or 3600, ttls=ttls, records=tuple(static))
        self.check_nameserver_glue(m, zone)
        return zone

    def absolute(self, text: str, zone_name: str | None) -> str:
        """Zone-file style: 'ns1' is relative to the zone, 'ns1.example.' is absolute, '@' is the apex."""
        text = text.strip()
        if text == "@":
            return zone_name or ""
        if text.endswith("."):
            return normalize_name(text)
        return normalize_name(f"{text}.{zone_name}" if zone_name else text)

    def soa(self, node: Node | None, zone_name: str | None) -> Soa | None:
        r = self.r
        m = r.mapping(node, ("mname", "rname", "serial", "refresh", "retry", "expire", "negative_ttl", "ttl"),
                      required=("mname", "rname"))
        if m is None:
            return None
        serial_node = m.get("serial")
        if isinstance(serial_node, Scalar) and serial_node.value == "auto" or serial_node is None:
            serial = int(time.time()) & 0xFFFFFFFF  # changes with every load, as secondaries expect
        else:
            serial = r.integer(serial_node, 0, 2**32 - 1, expected="a 32-bit serial or 'auto'")
        mname, rname = r.string(m.get("mname")), r.string(m.get("rname"))
        values = dict(refresh=r.ttl(m.get("refresh"), 3600), retry=r.ttl(m.get("retry"), 600),
                      expire=r.ttl(m.get("expire"), 604800), negative_ttl=r.ttl(m.get("negative_ttl"), 60),
                      ttl=r.ttl(m.get("ttl"), 3600))
        if None in values.values() or mname is None or rname is None or serial is None:
            return None
        return Soa(mname=self.absolute(mname, zone_name), rname=self.absolute(rname, zone_name),
                   serial=serial, **values)

    def name_ttls(self, node: Node | None) -> NameTTLs | None:
        r = self.r
        keys = {"global": "global_name", "privatelink": "privatelink", "traffic_manager": "traffic_manager",
                "traffic_manager_short": "traffic_manager_short",
                "regional": "regional", "data": "data", "replica": "replica", "private": "private"}
        defaults = NameTTLs()
        if node is None:
            return defaults
        m = r.mapping(node, tuple(keys))
        if m is None:
            return None
        values = {field: r.ttl(m.get(key), getattr(defaults, field)) for key, field in keys.items()}
        if None in values.values():
            return None
        if values["traffic_manager_short"] > values["traffic_manager"]:
            if m.get("traffic_manager_short") is None:
                values["traffic_manager_short"] = values["traffic_manager"]  # a short tm TTL below the default
            else:
                r.fail(m.get("traffic_manager_short"), f"traffic_manager_short {values['traffic_manager_short']} "
                                                       f"is longer than traffic_manager {values['traffic_manager']}")
                return None
        return NameTTLs(**values)

    def static_records(self, node: Node | None, zone_name: str | None) -> list[RR]:
        from dnsd.config import rdatatext  # start-up: rdatatext loads dnslib, needed only to compile records (not by the operator CLI)
        r = self.r
        result: list[RR] = []
        self.record_marks: list[tuple[RR, Node]] = []
        for item in r.sequence(node):
            m = r.mapping(item, ("name", "type", "ttl", "value", "values"), required=("name", "type"))
            if m is None:
                continue
            owner_text = r.string(m.get("name"))
            type_node = m.get("type")
            rtype = r.scalar(type_node, lambda v: records.type_number(str(v)), "a record type like A, TXT, CAA, MX")
            ttl = r.ttl(m.get("ttl"), 3600)
            if m.get("value") is not None and m.get("values") is not None:
                r.fail(m, "give either 'value' or 'values', not both")
                continue
            value_nodes = (r.one_or_many(m.get("value")) if m.get("value") is not None
                           else r.sequence(m.get("values")))
            if not value_nodes:
                r.fail(m, "missing required key 'value' (or 'values')")
            if owner_text is None or rtype is None or ttl is None or zone_name is None:
                continue
            owner = self.absolute(owner_text, zone_name)
            if not names.is_subdomain(owner, zone_name):
                r.fail(m.get("name"), f"record name {owner_text!r} is outside zone {zone_name!r}")
                continue
            if rtype in (records.SOA, records.NS) and owner == zone_name:
                r.fail(type_node, f"{records.type_name(rtype)} at the apex comes from zone.soa and "
                                  "zone.nameservers, not from records")
                continue
            if rtype in (records.OPT, records.ANY):
                r.fail(type_node, f"{records.type_name(rtype)} is not a record type that can be served")
                continue
            for value_node in value_nodes:
                text = r.string(value_node)
                if text is None:
                    continue
                try:
                    rdata = rdatatext.rdata_from_text(rtype, text, zone_name)
                except ValueError as err:
                    r.fail(value_node, str(err))
                    continue
                rr = RR(owner, rtype, ttl, rdata)
                result.append(rr)
                self.record_marks.append((rr, m))
        self.check_static_conflicts()
        return result

    def check_static_conflicts(self) -> None:
        """CNAME must stand alone at its name (RFC 1034 §3.6.2); RRsets share one TTL (RFC 2181 §5.2)."""
        by_name: dict[str, list[tuple[RR, Node]]] = {}
        for rr, node in self.record_marks:
            by_name.setdefault(rr.name, []).append((rr, node))
        for owner, entries in by_name.items():
            types = {rr.rtype for rr, _ in entries}
            if records.CNAME in types and len(entries) > 1:
                rr, node = next(e for e in entries if e[0].rtype == records.CNAME)
                others = sorted(records.type_name(t) for t in types - {records.CNAME}) or ["a second CNAME"]
                self.r.fail(node, f"CNAME at {owner!r} cannot stand beside other records "
                                  f"({', '.join(others)}) at the same name")
            ttls: dict[int, int] = {}
            for rr, node in entries:
                if ttls.setdefault(rr.rtype, rr.ttl) != rr.ttl:
                    self.r.fail(node, f"records of one RRset ({owner} {records.type_name(rr.rtype)}) "
                                      f"must share one TTL: {ttls[rr.rtype]} and {rr.ttl} given")

    def check_nameserver_glue(self, m: Map, zone: Zone) -> None:
        with_address = {rr.name for rr in zone.records if rr.rtype in (records.A, records.AAAA)}
        for ns in zone.nameservers:
            if names.is_subdomain(ns, zone.name) and ns not in with_address:
                self.r.fail(m.get("nameservers"), f"nameserver {ns!r} is inside the zone but has no "
                                                  "A or AAAA record in zone.records")

    # -- topology: regions, latency, client networks ---------------------------------------

    def topology(self, top: Map) -> Topology | None:
        r = self.r
        regions: list[str] = []
        regions_node = top.get("regions")
        for item in r.sequence(regions_node, "a list of region names"):
            name = r.string(item)
            if name is not None and r.label(item, name, "region"):
                if name in regions:
                    r.fail(item, f"region {name!r} is listed twice")
                regions.append(name)
        if regions_node is None:
            r.fail(top, "missing required key 'regions'")
        known = set(regions)
        latency: dict[tuple[str, str], float] = {(a, a): 0.0 for a in regions}
        latency_node = r.mapping(top.get("latency_ms"), open_keys=True)
        if latency_node is not None:
            for a, row in latency_node:
                if a not in known:
                    self.unknown_region(row, a, known, where="latency_ms has a row for")
                    continue
                row_map = r.mapping(row, open_keys=True, what="a mapping of region: milliseconds")
                for b, value_node in row_map or ():
                    if b not in known:
                        self.unknown_region(value_node, b, known, where="latency_ms names")
                        continue
                    ms = r.scalar(value_node, _non_negative_number, "milliseconds (a number >= 0)")
                    if ms is None:
                        continue
                    if a == b and ms != 0:
                        r.fail(value_node, f"latency from {a!r} to itself must be 0")
                    if (b, a) in latency and a != b and latency[(b, a)] != ms:
                        r.fail(value_node, f"latency {a}->{b} is {ms:g} but {b}->{a} is {latency[(b, a)]:g}; "
                                           "the table is symmetric, give each pair once")
                    latency[(a, b)] = latency[(b, a)] = ms
        networks: list[ClientNetwork] = []
        default_region = None
        clients = r.mapping(top.get("clients"), ("default_region", "networks"))
        if clients is not None:
            default_node = clients.get("default_region")
            default_region = r.string(default_node)
            if default_region is not None and default_region not in known:
                self.unknown_region(default_node, default_region, known, "default_region")
                default_region = None
            net_map = r.mapping(clients.get("networks"), open_keys=True,
                                what="a mapping of CIDR: region")
            for cidr, region_node in net_map or ():
                network = r.network(Scalar(net_map.key_mark(cidr), region_node.path, cidr))
                region = r.string(region_node)
                if region is not None and region not in known:
                    self.unknown_region(region_node, region, known, "client network")
                    continue
                if network is not None and region is not None:
                    networks.append(ClientNetwork(network, region))
        self.latency_pairs_missing = [(a, b) for a in regions for b in regions if (a, b) not in latency]
        return Topology(regions=tuple(regions), latency_ms=frozen_map(latency),
                        client_networks=tuple(networks), default_region=default_region)

    def unknown_region(self, node: Node, name: str, known: set[str], where: str) -> None:
        self.r.fail(node, f"{where} unknown region {name!r} (regions: {', '.join(sorted(known)) or 'none'})")

    # -- registries ---------------------------------------------------------------------------

    def registries(self, node: Node | None, zone: Zone | None, topology: Topology | None) -> dict[str, Registry | None]:
        r = self.r
        result: dict[str, Registry | None] = {}
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
            registry = self.registry(name, reg_node, zone, topology)
            result[name] = registry if valid_name else None
        return result

    def registry(self, name: str, node: Node, zone: Zone | None, topology: Topology | None) -> Registry | None:
        r = self.r
        m = r.mapping(node, ("routing", "all_down", "regional_endpoints", "data_endpoints", "replicas"),
                      required=("replicas",))
        if m is None:
            return None
        routing = r.choice(m.get("routing"), ROUTING_METHODS, "performance")
        replicas: list[Replica] = []
        replicas_node = r.mapping(m.get("replicas"), open_keys=True, what="a mapping of replica name: settings")
        for index, (replica_name, replica_node) in enumerate(replicas_node or ()):
            replica = self.replica(name, replica_name, replica_node, replicas_node, index, zone, topology)
            if replica is not None:
                replicas.append(replica)
        if replicas_node is not None and not replicas_node.entries:
            r.fail(replicas_node, "a registry needs at least one replica")
        all_down = self.all_down(m.get("all_down"), {rep.name for rep in replicas})
        if replicas and not any(rep.global_routing for rep in replicas):
            r.fail(replicas_node, f"registry {name!r} has no replica with global_routing on: "
                                  "its global name would have nowhere to go")
        if routing == "performance" and topology is not None:
            self.check_performance_inputs(m, name, replicas, topology)
        if routing == "weighted" and replicas and all(rep.weight == 0 for rep in replicas if rep.global_routing):
            r.fail(replicas_node, "weighted routing needs at least one globally routed replica with weight > 0")
        regional_endpoints = r.boolean(m.get("regional_endpoints"), True)
        data_endpoints = r.boolean(m.get("data_endpoints"), True)
        if (None in (routing, all_down, replicas_node, regional_endpoints, data_endpoints)
                or len(replicas) != len(replicas_node.entries)):
            return None
        return Registry(name=name, routing=routing, all_down=all_down, regional_endpoints=regional_endpoints,
                        data_endpoints=data_endpoints, replicas=tuple(replicas))

    def check_performance_inputs(self, m: Map, name: str, replicas: list[Replica], topology: Topology) -> None:
        if topology.default_region is None:
            self.r.fail(m.get("routing") or m, "performance routing needs clients.default_region "
                                               "for clients outside every client network")
        locations = {rep.location for rep in replicas}
        client_regions = set(topology.regions)
        missing = sorted({tuple(sorted(pair)) for pair in self.latency_pairs_missing
                          if pair[1] in locations and pair[0] in client_regions})
        if missing:
            shown = ", ".join(f"{a}<->{b}" for a, b in missing[:6]) + (" ..." if len(missing) > 6 else "")
            self.r.fail(m.get("routing") or m, f"performance routing needs latency_ms between every region "
                                               f"and each replica location; missing: {shown}")

    def replica(self, registry: str, name: str, node: Node, parent: Map, index: int,
                zone: Zone | None, topology: Topology | None) -> Replica | None:
        r = self.r
        key_node = Scalar(parent.key_mark(name), node.path, name)
        valid = r.label(key_node, name, "replica name")
        m = r.mapping(node, ("location", "host", "addresses", "weight", "priority", "global_routing", "probe"))
        if m is None:
            return None
        location_node = m.get("location") or key_node
        location = r.string(location_node)
        if location is not None and topology is not None and location not in topology.regions:
            where = "location names" if m.get("location") else f"replica {name!r} has no location and its name is an"
            self.unknown_region(location_node, location, set(topology.regions), where)
            location = None
        zone_name = zone.name if zone else None
        host_text = r.string(m.get("host"))
        host = (self.absolute(host_text, zone_name) if host_text
                else names.default_replica_host(registry, name, zone_name or "invalid"))
        addresses = [a for a in (r.address(n) for n in r.one_or_many(m.get("addresses"))) if a is not None]
        in_zone = zone_name is not None and names.is_subdomain(host, zone_name)
        if in_zone and not addresses and m.get("addresses") is None:
            r.fail(m, f"replica host {host!r} is in our zone, so list its addresses "
                      "(or set host to the replica's own external name)")
        if not in_zone and m.get("addresses") is not None and zone_name is not None:
            r.fail(m.get("addresses"), f"host {host!r} is outside zone {zone_name!r}: its addresses are "
                                       "served by its own DNS, remove them here")
        weight = r.integer(m.get("weight"), 0, 1_000_000, 100)
        priority = r.integer(m.get("priority"), 0, 1_000_000, index + 1)
        global_routing = r.boolean(m.get("global_routing"), True)
        probe_node = m.get("probe")
        probe = self.probe(probe_node, addresses) if probe_node is not None else None
        if (not valid or location is None or weight is None or priority is None or global_routing is None
                or (probe_node is not None and probe is None)):
            return None
        return Replica(name=name, location=location, host=host, addresses=tuple(addresses) if in_zone else (),
                       weight=weight, priority=priority, global_routing=global_routing, probe=probe)

    # -- probes -------------------------------------------------------------------------------

    def probe(self, node: Node, addresses: list) -> ProbeSpec | None:
        """`probe:` is one check (a mapping with `kind`) or {checks: [...], interval, timeout, ...}."""
        r = self.r
        if isinstance(node, Map) and node.get("checks") is None:
            m = r.mapping(node, CHECK_KEYS + PROBE_TIMING_KEYS, required=("kind",))
            check_nodes = [node] if m is not None else []
            timing = m
        else:
            timing = r.mapping(node, ("checks",) + PROBE_TIMING_KEYS, required=("checks",),
                               what="a check (with 'kind') or {checks: [...]}")
            check_nodes = r.sequence(timing.get("checks")) if timing is not None else []
            if timing is not None and timing.get("checks") is not None and not check_nodes:
                r.fail(timing.get("checks"), "list at least one check")
        if timing is None:
            return None
        checks = [self.check(item, addresses, skip_timing=item is node) for item in check_nodes]
        values = dict(interval=r.duration(timing.get("interval"), 5.0, 0.05),
                      jitter=r.scalar(timing.get("jitter"), _fraction, "a fraction from 0 to 1", 0.1),
                      timeout=r.duration(timing.get("timeout"), 2.0, 0.01),
                      fall=r.integer(timing.get("fall"), 1, 100, 3), rise=r.integer(timing.get("rise"), 1, 100, 2))
        if None in values.values() or None in checks or not checks:
            return None
        if values["timeout"] > values["interval"]:
            r.fail(timing.get("timeout") or timing, f"timeout {values['timeout']:g}s is longer than the interval "
                                                    f"{values['interval']:g}s: rounds would overlap")
            return None
        return ProbeSpec(checks=tuple(checks), **values)

    def check(self, node: Node, addresses: list, skip_timing: bool) -> ProbeCheck | None:
        r = self.r
        allowed = CHECK_KEYS + (PROBE_TIMING_KEYS if skip_timing else ())
        m = r.mapping(node, allowed, required=("kind",))
        if m is None:
            return None
        kind = r.choice(m.get("kind"), PROBE_KINDS)
        if kind is None:
            return None
        default_scheme = {"https": "https", "oci": "https", "harbor": "https"}.get(kind, "http")
        scheme = r.choice(m.get("scheme"), ("http", "https"), default_scheme)
        if kind in ("http", "https") and m.get("scheme") is not None and scheme != kind:
            r.fail(m.get("scheme"), f"kind {kind} already sets the scheme; remove 'scheme' or use kind {scheme}")
        address = r.string(m.get("address"))
        if address is None and m.get("address") is None:
            if not addresses:
                r.fail(m, "give the probe an 'address': the replica has no addresses of its own to probe")
            else:
                address = str(addresses[0])
        if kind == "tcp" and m.get("port") is None:
            r.fail(m, "a tcp check needs 'port'")
        port = r.integer(m.get("port"), 1, 65535, 443 if scheme == "https" else 80)
        headers = []
        header_map = r.mapping(m.get("headers"), open_keys=True, what="a mapping of header: value")
        for key, value_node in header_map or ():
            value = r.string(value_node)
            if value is not None:
                headers.append((key, value))
        expect_node = m.get("expect_status")
        # absent: () and ProbeCheck applies the kind's default (dnsd.model owns it)
        expect = (r.scalar(expect_node, _status_ranges, "status codes like \"200-299,401\"")
                  if expect_node is not None else ())
        components = tuple(c for c in (r.string(n) for n in r.sequence(m.get("components"))) if c)
        if components and kind != "harbor":
            r.fail(m.get("components"), f"'components' applies to harbor checks, not {kind}")
        for key in ("canary_manifest", "canary_blob", "write_canary"):
            if m.get(key) is not None and kind != "oci":
                r.fail(m.get(key), f"'{key}' applies to oci checks, not {kind}")
        canary_manifest = r.string(m.get("canary_manifest"))
        if canary_manifest is not None and ":" not in canary_manifest:
            r.fail(m.get("canary_manifest"), f"expected REPOSITORY:TAG, got {canary_manifest!r}")
        canary_blob = r.string(m.get("canary_blob"))
        if canary_blob is not None and "@sha256:" not in canary_blob:
            r.fail(m.get("canary_blob"), f"expected REPOSITORY@sha256:DIGEST, got {canary_blob!r}")
        values = dict(host_header=r.string(m.get("host_header")), path=r.string(m.get("path"), ""),
                      method=(r.string(m.get("method"), "GET") or "GET").upper(), body_contains=r.string(m.get("body_contains")),
                      json_path=r.string(m.get("json_path")), json_equals=r.string(m.get("json_equals")),
                      tls_verify=r.boolean(m.get("tls_verify"), True), ca_file=self.file_name(m.get("ca_file")),
                      write_canary=r.string(m.get("write_canary")))
        if m.get("path") is not None and values["path"] is not None and not values["path"].startswith("/"):
            r.fail(m.get("path"), f"path must start with '/', got {values['path']!r}")
        if None in (address, port, expect, scheme, values["path"], values["tls_verify"]):
            return None
        return ProbeCheck(kind=kind, address=address, port=port, scheme=scheme, headers=tuple(headers),
                          expect_status=expect, canary_manifest=canary_manifest, canary_blob=canary_blob,
                          components=components, **values)

    def probes_settings(self, node: Node | None) -> ProbesSettings | None:
        r = self.r
        if node is None:
            return ProbesSettings()
        m = r.mapping(node, ("listen", "max_concurrent", "webhook", "state_file", "tls", "token_file",
                             "public_metrics", "registry_credentials"))
        if m is None:
            return None
        defaults = ProbesSettings()
        listen = r.scalar(m.get("listen"), lambda v: parse_listen(str(v), 8053),
                          "HOST:PORT like 127.0.0.1:8053", defaults.listen)
        webhook = None
        wm = r.mapping(m.get("webhook"), ("url", "timeout", "retries", "backoff", "secret_file"), required=("url",))
        if wm is not None:
            wd = Webhook(url="")
            url = r.scalar(wm.get("url"), _http_url, "an http:// or https:// URL")
            values = dict(timeout=r.duration(wm.get("timeout"), wd.timeout, 0.01),
                          retries=r.integer(wm.get("retries"), 0, 100, wd.retries),
                          backoff=r.duration(wm.get("backoff"), wd.backoff, 0.0))
            secret_file = self.file_name(wm.get("secret_file"))
            if url is not None and None not in values.values():
                webhook = Webhook(url=url, secret_file=secret_file, **values)
        tls = r.mapping(m.get("tls"), ("cert_file", "key_file"), required=("cert_file", "key_file"),
                        what="{cert_file: PEM, key_file: PEM}")
        cert_file = self.file_name(tls.get("cert_file")) if tls is not None else None
        key_file = self.file_name(tls.get("key_file")) if tls is not None else None
        token_file = self.file_name(m.get("token_file"))
        public_metrics = r.boolean(m.get("public_metrics"), defaults.public_metrics)
        if token_file is not None and tls is None and listen is not None and not _loopback(listen[0]):
            r.fail(m.get("token_file"), f"probes listens on {listen[0]} without tls: the token (and the verdicts) "
                                        "would cross the network in clear; add probes.tls or listen on loopback")
        if public_metrics is False and token_file is None:
            r.fail(m.get("public_metrics"), "public_metrics: false needs probes.token_file (else nobody can scrape)")
        max_concurrent = r.integer(m.get("max_concurrent"), 1, 10_000, defaults.max_concurrent)
        registry_credentials = self.file_name(m.get("registry_credentials"))
        if listen is None or max_concurrent is None or public_metrics is None:
            return None
        return ProbesSettings(listen=listen, max_concurrent=max_concurrent, webhook=webhook,
                              state_file=self.file_name(m.get("state_file")), tls_cert_file=cert_file,
                              tls_key_file=key_file, token_file=token_file, public_metrics=public_metrics,
                              registry_credentials=registry_credentials)

    def file_name(self, node: Node | None) -> str | None:
        """A path to a file (read at run time, so a config stays checkable on another machine).
        Relative paths are relative to the config file's folder, whatever the working directory."""
        text = self.r.string(node)
        if text is not None and not text.strip():
            self.r.fail(node, "expected a file name, got an empty string")
            return None
        if text is None or self.base_dir is None or os.path.isabs(text):
            return text
        return os.path.normpath(os.path.join(self.base_dir, text))

    def feed_access(self, m: Map, defaults: FeedAccess) -> FeedAccess:
        return FeedAccess(ca_file=self.file_name(m.get("ca_file")) or defaults.ca_file,
                          token_file=self.file_name(m.get("token_file")) or defaults.token_file)

    def admin_settings(self, node: Node | None) -> AdminSettings | None:
        r = self.r
        defaults = AdminSettings()
        if node is None:
            return defaults
        m = r.mapping(node, ("listen", "token_file", "token_env", "public_metrics", "public_status_page",
                             "state_file"))
        if m is None:
            return None
        listen_node = m.get("listen")
        if isinstance(listen_node, Scalar) and listen_node.value in ("off", False):
            listen = None
        else:
            listen = r.scalar(listen_node, lambda v: parse_listen(str(v), 8054),
                              "HOST:PORT like 127.0.0.1:8054, or off", defaults.listen)
            if listen is None:
                return None
        values = dict(public_metrics=r.boolean(m.get("public_metrics"), True),
                      public_status_page=r.boolean(m.get("public_status_page"), True))
        if None in values.values():
            return None
        return AdminSettings(listen=listen, token_file=self.file_name(m.get("token_file")),
                             token_env=r.string(m.get("token_env"), defaults.token_env),
                             state_file=self.file_name(m.get("state_file")), **values)

    def health_settings(self, node: Node | None) -> HealthFeedSettings | None:
        r = self.r
        if node is None:
            return HealthFeedSettings()
        m = r.mapping(node, ("feeds", "quorum", "poll_interval", "ttl", "state_file", "ca_file", "token_file"))
        if m is None:
            return None
        access = self.feed_access(m, FeedAccess())
        feeds, per_feed = [], {}
        for item in r.one_or_many(m.get("feeds")):
            fm = item if isinstance(item, Map) else None
            if fm is not None:  # {url, ca_file, token_file}: this feed's own TLS trust and token
                r.mapping(fm, ("url", "ca_file", "token_file"), required=("url",))
            url_node = fm.get("url") if fm is not None else item
            url = r.scalar(url_node, _http_url, "an http:// or https:// URL, or {url, ca_file, token_file}")
            if url is None:
                continue
            if url in feeds:
                r.fail(url_node, f"feed {url} is listed twice")
                continue
            feeds.append(url)
            own = self.feed_access(fm, access) if fm is not None else access
            if own != access:
                per_feed[url] = own
            self.check_feed_access(url, own, fm, url_node)
        if m.get("ca_file") is not None and feeds and not any(f.startswith("https:") for f in feeds):
            r.fail(m.get("ca_file"), "ca_file applies to https feeds, and every feed listed is plain http")
        quorum_node = m.get("quorum")
        quorum = 0
        if quorum_node is not None and not (isinstance(quorum_node, Scalar) and quorum_node.value == "majority"):
            quorum = r.integer(quorum_node, 1, 100, expected="'majority' or a number of feeds")
            if quorum is not None and quorum > len(feeds):
                r.fail(quorum_node, f"quorum {quorum} is more than the {len(feeds)} feeds listed")
        values = dict(poll_interval=r.duration(m.get("poll_interval"), 1.0, 0.05), ttl=r.duration(m.get("ttl"), 30.0, 0.1))
        if quorum is None or None in values.values():
            return None
        if values["ttl"] < values["poll_interval"]:
            r.fail(m.get("ttl"), f"ttl {values['ttl']:g}s is shorter than poll_interval {values['poll_interval']:g}s: "
                                 "health would expire between polls")
        return HealthFeedSettings(feeds=tuple(feeds), quorum=quorum, state_file=self.file_name(m.get("state_file")),
                                  access=access, feed_access=frozen_map(per_feed), **values)

    def check_feed_access(self, url: str, access: FeedAccess, where: Map | None, url_node: Node) -> None:
        """A CA file means TLS; a token over plain HTTP beyond loopback is readable on the path."""
        parts = urlsplit(url)
        if parts.scheme == "https":
            return
        if where is not None and where.get("ca_file") is not None:
            self.r.fail(where.get("ca_file"), f"ca_file applies to https feeds, and {url} is plain http")
        if access.token_file is not None and not _loopback(parts.hostname or ""):
            self.r.fail(url_node, f"feed {url} is plain http beyond loopback: its bearer token would cross the "
                                  "network in clear; use https (with ca_file)")

    def all_down(self, node: Node | None, replica_names: set[str]) -> AllDownPolicy | None:
        r = self.r
        if node is None:
            return AllDownPolicy("fail_open")
        if isinstance(node, Scalar):
            mode = r.choice(node, ("fail_open", "servfail"))
            if mode == "fallback":
                return None
            return AllDownPolicy(mode) if mode else None
        m = r.mapping(node, ("policy", "replica"), required=("policy",),
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

    # -- views ------------------------------------------------------------------------------

    def views(self, node: Node | None, registries: dict[str, Registry | None]) -> list[View]:
        r = self.r
        result: list[View] = []
        m = r.mapping(node, open_keys=True, what="a mapping of view name: settings")
        seen_sources: dict[object, str] = {}
        for name, view_node in m or ():
            vm = r.mapping(view_node, ("sources", "trusted_resolvers", "private_endpoints"),
                           required=("sources", "private_endpoints"))
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
                private = self.private_endpoints(ep_node, registry) if registry else None
                if private is not None:
                    endpoints[reg_name] = private
            extra = {"trusted_resolvers": tuple(trusted)} if vm.get("trusted_resolvers") is not None else {}
            result.append(View(name=name, sources=tuple(sources), endpoints=frozen_map(endpoints), **extra))
        return result

    def private_endpoints(self, node: Node, registry: Registry) -> PrivateEndpoints | None:
        r = self.r
        m = r.mapping(node, ("global", "data", "regional"), required=("global",))
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

    # -- cross checks -----------------------------------------------------------------------

    def check_collisions(self, top: Map, zone: Zone, registries: dict[str, Registry | None]) -> None:
        """A static record must not shadow a generated name, and replica hosts must be unique."""
        generated: dict[str, str] = {}
        for reg in registries.values():
            if reg is None:
                continue
            for owner, what in _generated_names(reg, zone.name):
                generated.setdefault(owner, what)
        for rr, node in getattr(self, "record_marks", []):
            if rr.name in generated:
                self.r.fail(node.get("name") or node, f"record {rr.name!r} collides with {generated[rr.name]}; "
                                                       "geotm answers that name itself")
        hosts: dict[str, str] = {}
        for reg in registries.values():
            for rep in (reg.replicas if reg else ()):
                owner = f"{reg.name}.{rep.name}"
                if rep.host in hosts and hosts[rep.host] != owner:
                    reg_node = top.get("registries")
                    self.r.fail(reg_node, f"replica host {rep.host!r} is used by both {hosts[rep.host]} and {owner}")
                hosts.setdefault(rep.host, owner)


def _generated_names(reg: Registry, zone: str):
    yield names.global_name(reg.name, zone), f"registry {reg.name}'s global name"
    yield names.privatelink_name(reg.name, zone), f"registry {reg.name}'s privatelink name"
    yield names.traffic_manager_name(reg.name, zone), f"registry {reg.name}'s traffic-manager name"
    for rep in reg.replicas:
        where = f"registry {reg.name} replica {rep.name}"
        if rep.addresses:
            yield rep.host, f"{where}'s host"
        yield names.regional_name(reg.name, rep.name, zone), f"{where}'s regional name"
        yield names.regional_private_name(reg.name, rep.name, zone), f"{where}'s private regional name"
        yield names.data_name(reg.name, rep.name, zone), f"{where}'s data name"
        yield names.data_private_name(reg.name, rep.name, zone), f"{where}'s private data name"


def _loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): traffic that never leaves the machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError()
    return float(value)


def _http_url(value: object) -> str:
    text = str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError()
    return text


def _status_ranges(value: object) -> tuple[StatusRange, ...]:
    """'200-299,401' or 204 -> ranges; every code 100..599."""
    if isinstance(value, bool):
        raise ValueError()
    ranges = []
    for part in str(value).split(","):
        low_text, _, high_text = part.strip().partition("-")
        low = int(low_text)
        high = int(high_text) if high_text else low
        if not 100 <= low <= high <= 599:
            raise ValueError()
        ranges.append(StatusRange(low, high))
    return tuple(ranges)


def _non_negative_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError()
    return float(value)
