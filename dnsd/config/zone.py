"""The zone section: name, SOA, nameservers, TTLs of the generated names and the static records (their
rdata text compiled here, and only here); what a static record may not be; an auto serial across reloads."""
from __future__ import annotations

from dataclasses import replace

from dnsd import names
from dnsd import records
from dnsd.records import RR, normalize_name
from dnsd.config import keys
from dnsd.config.reader import Reader
from dnsd.config.yamlnodes import Map, Node, Scalar
from dnsd.model import RECORD_TTL, Config, NameTTLs, Registry, Soa, Zone, default_of

SERIAL_SPACE = 2**32  # SOA serials are 32-bit and compared in sequence space arithmetic (RFC 1982)

LocatedRecords = list[tuple[RR, Map]]  # each static record with the mapping that wrote it


def zone_section(r: Reader, node: Node | None, now: float | None) -> tuple[Zone | None, LocatedRecords]:
    """The zone and its static records, located for the checks against the generated names.
    now: the time `serial: auto` takes (None: 0, for callers that never serve the zone)."""
    m = r.mapping(node, keys.ZONE, required=("name", "soa", "nameservers"))
    if m is None:
        return None, []
    name_node = m.get("name")
    zone_name = r.string(name_node)
    if zone_name is not None:
        zone_name = normalize_name(zone_name)
        if not zone_name or not all(r.label(name_node, label, "zone label") for label in zone_name.split(".")):
            zone_name = None
    soa = _soa(r, m.get("soa"), zone_name, now)
    nameservers = []
    for item in r.sequence(m.get("nameservers")):
        text = r.string(item)
        if text:
            nameservers.append(absolute_name(text, zone_name))
    if m.get("nameservers") is not None and not nameservers:
        r.fail(m.get("nameservers"), "list at least one nameserver")
    ttls = _name_ttls(r, m.get("ttl"))
    located = _static_records(r, m.get("records"), zone_name)
    if zone_name is None or soa is None or ttls is None:
        return None, located
    zone = Zone(name=zone_name, soa=soa, nameservers=tuple(nameservers),
                ns_ttl=r.ttl(m.get("ns_ttl"), default_of(Zone, "ns_ttl")) or default_of(Zone, "ns_ttl"), ttls=ttls, records=tuple(rr for rr, _ in located))
    _check_nameserver_glue(r, m, zone)
    return zone, located


def absolute_name(text: str, zone_name: str | None) -> str:
    """Zone-file style: 'ns1' is relative to the zone, 'ns1.example.' is absolute, '@' is the apex."""
    text = text.strip()
    if text == "@":
        return zone_name or ""
    if text.endswith("."):
        return normalize_name(text)
    return normalize_name(f"{text}.{zone_name}" if zone_name else text)


def _soa(r: Reader, node: Node | None, zone_name: str | None, now: float | None) -> Soa | None:
    m = r.mapping(node, keys.SOA, required=("mname", "rname"))
    if m is None:
        return None
    serial_node = m.get("serial")
    auto = serial_node is None or isinstance(serial_node, Scalar) and serial_node.value == "auto"
    if auto:
        serial = int(now or 0) % SERIAL_SPACE  # the load time; carry_serial keeps it over unchanged reloads
    else:
        serial = r.integer(serial_node, 0, SERIAL_SPACE - 1, expected="a 32-bit serial or 'auto'")
    mname, rname = r.string(m.get("mname")), r.string(m.get("rname"))
    values = {name: r.ttl(m.get(name), default_of(Soa, name))
              for name in ("refresh", "retry", "expire", "negative_ttl", "ttl")}
    if None in values.values() or mname is None or rname is None or serial is None:
        return None
    return Soa(mname=absolute_name(mname, zone_name), rname=absolute_name(rname, zone_name),
               serial=serial, auto_serial=auto, **values)


def _name_ttls(r: Reader, node: Node | None) -> NameTTLs | None:
    defaults = NameTTLs()
    if node is None:
        return defaults
    m = r.mapping(node, keys.NAME_TTLS)
    if m is None:
        return None
    values = {field: r.ttl(m.get(key), getattr(defaults, field))
              for field, key in keys.key_by_field(NameTTLs, keys.NAME_TTLS_RENAMED).items()}
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


def _static_records(r: Reader, node: Node | None, zone_name: str | None) -> LocatedRecords:
    from dnsd.config import rdatatext  # start-up: rdatatext loads dnslib, needed only to compile records (not by the operator CLI)
    located: LocatedRecords = []
    for item in r.sequence(node):
        m = r.mapping(item, keys.RECORD, required=("name", "type"))
        if m is None:
            continue
        owner_text = r.string(m.get("name"))
        type_node = m.get("type")
        rtype = r.scalar(type_node, lambda v: records.type_number(str(v)), "a record type like A, TXT, CAA, MX")
        ttl = r.ttl(m.get("ttl"), RECORD_TTL)
        if m.get("value") is not None and m.get("values") is not None:
            r.fail(m, "give either 'value' or 'values', not both")
            continue
        value_nodes = (r.one_or_many(m.get("value")) if m.get("value") is not None
                       else r.sequence(m.get("values")))
        if not value_nodes:
            r.fail(m, "missing required key 'value' (or 'values')")
        if owner_text is None or rtype is None or ttl is None or zone_name is None:
            continue
        owner = absolute_name(owner_text, zone_name)
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
            located.append((RR(owner, rtype, ttl, rdata), m))
    _check_static_conflicts(r, located)
    return located


def _check_static_conflicts(r: Reader, located: LocatedRecords) -> None:
    """CNAME must stand alone at its name (RFC 1034 §3.6.2); RRsets share one TTL (RFC 2181 §5.2)."""
    by_name: dict[str, LocatedRecords] = {}
    for rr, node in located:
        by_name.setdefault(rr.name, []).append((rr, node))
    for owner, entries in by_name.items():
        types = {rr.rtype for rr, _ in entries}
        if records.CNAME in types and len(entries) > 1:
            rr, node = next(e for e in entries if e[0].rtype == records.CNAME)
            others = sorted(records.type_name(t) for t in types - {records.CNAME}) or ["a second CNAME"]
            r.fail(node, f"CNAME at {owner!r} cannot stand beside other records "
                         f"({', '.join(others)}) at the same name")
        ttls: dict[int, int] = {}
        for rr, node in entries:
            if ttls.setdefault(rr.rtype, rr.ttl) != rr.ttl:
                r.fail(node, f"records of one RRset ({owner} {records.type_name(rr.rtype)}) "
                             f"must share one TTL: {ttls[rr.rtype]} and {rr.ttl} given")


def _check_nameserver_glue(r: Reader, m: Map, zone: Zone) -> None:
    with_address = {rr.name for rr in zone.records if rr.rtype in (records.A, records.AAAA)}
    for ns in zone.nameservers:
        if names.is_subdomain(ns, zone.name) and ns not in with_address:
            r.fail(m.get("nameservers"), f"nameserver {ns!r} is inside the zone but has no "
                                         "A or AAAA record in zone.records")


def check_generated_names(r: Reader, located: LocatedRecords, zone: Zone,
                          registries: dict[str, Registry | None]) -> None:
    """A static record must not shadow a name geotm generates for a registry."""
    generated: dict[str, str] = {}
    for reg in registries.values():
        if reg is None:
            continue
        for owner, what in _generated_names(reg, zone.name):
            generated.setdefault(owner, what)
    for rr, node in located:
        if rr.name in generated:
            r.fail(node.get("name") or node, f"record {rr.name!r} collides with {generated[rr.name]}; "
                                             "geotm answers that name itself")


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


def carry_serial(old: Config, new: Config) -> Config:
    """The reloaded config with its auto serial following the running one: the same serial when the file
    is unchanged (nothing to announce), else one newer than it, the load time or, while the clock has
    not passed the running serial, that serial + 1. A serial the file spells out is left as written."""
    soa = new.zone.soa
    if not soa.auto_serial:
        return new
    running = old.zone.soa.serial
    if new.digest == old.digest:
        serial = running
    elif 0 < (soa.serial - running) % SERIAL_SPACE < SERIAL_SPACE // 2:
        return new  # already newer (RFC 1982 §3.2)
    else:
        serial = (running + 1) % SERIAL_SPACE
    return replace(new, zone=replace(new.zone, soa=replace(soa, serial=serial)))
