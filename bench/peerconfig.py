"""The configs every compared server starts with, written from benchlib's zone model: RFC 1035 zone
files (Knot and PowerDNS static, PowerDNS LUA, gdnsd), knot.conf, pdns.conf and named.conf, gdnsd's
config and health file, and geotm's bench copy of its own config. Pure (no processes, no network)."""
from __future__ import annotations

from pathlib import Path

import yaml
from benchlib import ZoneModel

from dnsd.config import read_document

# --------------------------------------------------------------------------------------------
# Zone files. Knot and PowerDNS read the same RFC 1035 file; they differ only in the
# traffic-manager hop, which is where each server's own dynamic mechanism goes.

SERIAL = 2024010101


def _common_records(m: ZoneModel, tm_lines: dict[str, list[str]], skip_types: tuple[str, ...] = ()) -> list[str]:
    """Zone file body: SOA, NS, static records, then per registry the chain. `tm_lines[reg]` are the
    lines for that registry's traffic-manager hop (owner included)."""
    out = [
        f"$ORIGIN {m.zone}.",
        f"$TTL {m.soa_ttl}",
        f"@ {m.soa_ttl} IN SOA {m.fqdn(m.soa_mname)} {m.fqdn(m.soa_rname)} "
        f"{SERIAL} {m.soa_refresh} {m.soa_retry} {m.soa_expire} {m.soa_negative_ttl}",
    ]
    for ns in m.nameservers:
        out.append(f"@ {m.ns_ttl} IN NS {m.fqdn(ns)}")
    for owner, rtype, ttl, rdata in m.records:
        if rtype in skip_types:
            continue
        if rtype == "TXT" and not rdata.startswith('"'):
            rdata = f'"{rdata}"'
        out.append(f"{owner} {ttl} IN {rtype} {rdata}")
    t = m.ttls
    for reg in m.registries:
        r = reg.name
        out.append(f"; registry {r}: global -> privatelink -> tm -> replica host")
        out.append(f"{m.global_name(r)} {t.global_name} IN CNAME {m.fqdn(m.privatelink_name(r))}")
        out.append(f"{m.privatelink_name(r)} {t.privatelink} IN CNAME {m.fqdn(m.tm_name(r))}")
        out.extend(tm_lines[r])
        for rep in reg.replicas:
            host = m.replica_host(r, rep.name)
            out.append(f"{m.regional_name(r, rep.name)} {t.regional} IN CNAME {m.fqdn(host)}")
            out.append(f"{m.data_name(r, rep.name)} {t.data} IN CNAME {m.fqdn(host)}")
            for addr in rep.addresses:
                rt = "AAAA" if ":" in addr else "A"
                out.append(f"{host} {t.replica} IN {rt} {addr}")
    return out


def static_zone(m: ZoneModel) -> str:
    """Knot and the static PowerDNS variant: the traffic-manager hop fixed to the replica a loopback
    client gets from geotm (eastus for config/example.yaml)."""
    tm = {}
    for reg in m.registries:
        rep = m.default_replica if any(p.name == m.default_replica for p in reg.replicas) else reg.replicas[0].name
        tm[reg.name] = [f"{m.tm_name(reg.name)} {m.ttls.traffic_manager} IN CNAME "
                        f"{m.fqdn(m.replica_host(reg.name, rep))}"]
    return "\n".join(_common_records(m, tm)) + "\n"


def pdns_lua_zone(m: ZoneModel, function: str = "pickwhashed") -> str:
    """PowerDNS with a LUA record on the traffic-manager hop: a weighted pick over the replica hosts
    (pickwhashed: sticky per client address / ECS, like geotm's weighted routing; pickwrandom: a
    fresh draw per query)."""
    tm = {}
    for reg in m.registries:
        items = ", ".join(f"{{{rep.weight}, '{m.fqdn(m.replica_host(reg.name, rep.name))}'}}" for rep in reg.replicas)
        tm[reg.name] = [f"{m.tm_name(reg.name)} {m.ttls.traffic_manager} IN LUA CNAME "
                        f"\"{function}({{{items}}})\""]
    return "\n".join(_common_records(m, tm)) + "\n"


def gdnsd_zone(m: ZoneModel) -> str:
    """gdnsd: the traffic-manager hop is a DYNA (weighted addresses with health from a feed file).
    gdnsd 3.x forbids a DYNC whose CNAME target is inside the same zone, so the weighted CNAME to
    the replica host cannot be expressed; the DYNA returns the chosen replica's address at the tm
    name instead (one CNAME fewer in the chain, the same final address and weights)."""
    ttl = m.ttls.replica
    tm = {reg.name: [f"{m.tm_name(reg.name)} {ttl}/{ttl} DYNA weighted!{reg.name}_tm"]
          for reg in m.registries}
    lines = _common_records(m, tm, skip_types=("CAA",))
    # gdnsd takes CAA only in RFC 3597 generic form
    for owner, rtype, ttl, rdata in m.records:
        if rtype == "CAA":
            lines.insert(4, f"{owner} {ttl} TYPE257 {caa_rfc3597(rdata)}")
    return "\n".join(lines) + "\n"


def caa_rfc3597(rdata: str) -> str:
    """'0 issue "letsencrypt.org"' -> '\\# LEN HEX' (RFC 3597 generic rdata)."""
    flags, tag, value = rdata.split(None, 2)
    value = value.strip('"')
    raw = bytes([int(flags), len(tag)]) + tag.encode() + value.encode()
    return f"\\# {len(raw)} {raw.hex()}"


def gdnsd_health_file(m: ZoneModel) -> str:
    """The extfile feed: every replica address UP (geotm runs with no health feed: all online)."""
    lines = []
    for reg in m.registries:
        for rep in reg.replicas:
            for a in rep.addresses:
                lines.append(f"{a} => UP")
    return "\n".join(sorted(set(lines))) + "\n"


def gdnsd_config(m: ZoneModel, port: int, run_dir: str, state_dir: str, health_file: str) -> str:
    res = []
    for reg in m.registries:
        items = "\n".join(f"        {rep.name} => [ {a}, {rep.weight} ]"
                          for rep in reg.replicas for a in rep.addresses if ":" not in a)
        res.append(f"    {reg.name}_tm => {{\n        service_types => healthfeed\n{items}\n    }}")
    body = "\n".join(res)
    # gdnsd forces every _acme-challenge TXT to this TTL (default 0); keep the zone's own TTL
    acme = [ttl for owner, rtype, ttl, _ in m.records if rtype == "TXT" and owner.startswith("_acme-challenge")]
    acme_line = f"    acme_challenge_dns_ttl => {min(max(acme), 3600)}\n" if acme else ""
    return f"""options => {{
    listen => [ 127.0.0.1:{port} ]
    udp_threads => 1
    tcp_threads => 1
    # gdnsd >= 3.4 emits only the first CNAME by default; chain through in-zone CNAMEs like the others
    experimental_no_chain => false
{acme_line}    run_dir => {run_dir}
    state_dir => {state_dir}
}}
service_types => {{
    healthfeed => {{
        plugin => extfile
        file => {health_file}
        direct => true
        def_down => false
    }}
}}
plugins => {{
  weighted => {{
{body}
  }}
}}
"""


def knot_config(zone: str, port: int, base: str, zone_file: str) -> str:
    """Knot serving one zone from a file on 127.0.0.1:port, one UDP and one TCP worker (the peers' Knot,
    and the forwarding bench's upstream)."""
    return f"""server:
    listen: 127.0.0.1@{port}
    rundir: {base}/run
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

log:
  - target: stderr
    any: warning

database:
    storage: {base}/db

control:
    listen: {base}/run/knot.sock

template:
  - id: default
    storage: {base}
    journal-content: none
    zonefile-sync: -1
    semantic-checks: on

zone:
  - domain: {zone}
    file: {zone_file}
"""


def pdns_config(port: int, base: str, lua: bool) -> str:
    lines = [
        "launch=bind",
        f"bind-config={base}/named.conf",
        "local-address=127.0.0.1",
        f"local-port={port}",
        f"socket-dir={base}",
        "guardian=no",
        "daemon=no",
        "disable-syslog=yes",
        "write-pid=no",
        "loglevel=4",
        "receiver-threads=1",
        "distributor-threads=1",
        "webserver=no",
        "api=no",
        "security-poll-suffix=",
        "consistent-backends=yes",
    ]
    if lua:
        lines += ["enable-lua-records=yes", "edns-subnet-processing=yes"]
    return "\n".join(lines) + "\n"


def pdns_named_conf(m: ZoneModel, zone_file: str) -> str:
    return f'zone "{m.zone}" {{\n    type master;\n    file "{zone_file}";\n}};\n'


def geotm_bench_document(config_path: str | Path, tmp: str | Path, port: int) -> dict:
    """A copy of the geotm config for benchmarking, as data: no health feeds (every replica online,
    nothing polled), admin API off, every state file in the temp dir, listening on 127.0.0.1:port."""
    doc = read_document(config_path)
    tmp = Path(tmp)
    doc.setdefault("server", {})["listen"] = [f"127.0.0.1:{port}"]
    health = doc.setdefault("health", {})
    health.pop("feeds", None)
    health.pop("quorum", None)
    health["state_file"] = str(tmp / "dnsd-health.json")
    admin = doc.setdefault("admin", {})
    admin["listen"] = "off"
    admin["state_file"] = str(tmp / "dnsd-overrides.json")
    admin["token_file"] = str(tmp / "admin-token")
    if "probes" in doc:
        doc["probes"]["state_file"] = str(tmp / "probes-state.json")
    geoip = (doc.get("clients") or {}).get("geoip")
    if geoip and not Path(geoip["database"]).is_absolute():  # relative to the original config's folder
        geoip["database"] = str((Path(config_path).parent / geoip["database"]).resolve())
    return doc


def geotm_bench_config(config_path: str | Path, tmp: str | Path, port: int) -> str:
    """geotm_bench_document as the YAML file dnsd reads."""
    return yaml.safe_dump(geotm_bench_document(config_path, tmp, port), sort_keys=False)
