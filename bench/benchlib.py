"""Pure parts of the benchmark harness (no processes, no network): the zone model built from a geotm
config (through dnsd.config, names through dnsd.names), the peers' config generators, the dnsperf
query-file generator and the dnsperf output parsers. `bench/run` drives these;
tests/test_bench_static.py checks them without any peer installed."""
from __future__ import annotations

import ipaddress
import math
import random
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dnsd import names
from dnsd.answers.records import normalize_name, type_name
from dnsd.config import load_config, read_document
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


def knot_config(m: ZoneModel, port: int, base: str, zone_file: str) -> str:
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
  - domain: {m.zone}
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
    return doc


def geotm_bench_config(config_path: str | Path, tmp: str | Path, port: int) -> str:
    """geotm_bench_document as the YAML file dnsd reads."""
    return yaml.safe_dump(geotm_bench_document(config_path, tmp, port), sort_keys=False)


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


# --------------------------------------------------------------------------------------------
# dnsperf output


_NUM = r"([0-9]+(?:\.[0-9]+)?)"


def parse_dnsperf(text: str) -> dict:
    """The summary dnsperf 2.x prints at the end of a run: queries sent/completed/lost, qps,
    average latency (s) with min/max and stddev, run time, response codes."""
    out: dict = {}

    def grab(key: str, pattern: str, conv=float):
        mm = re.search(pattern, text)
        if mm:
            out[key] = conv(mm.group(1))

    grab("queries_sent", r"Queries sent:\s+(\d+)", int)
    grab("queries_completed", r"Queries completed:\s+(\d+)", int)
    grab("queries_lost", r"Queries lost:\s+(\d+)", int)
    grab("queries_interrupted", r"Queries interrupted:\s+(\d+)", int)
    grab("qps", r"Queries per second:\s+" + _NUM)
    grab("run_time_s", r"Run time \(s\):\s+" + _NUM)
    grab("avg_latency_s", r"Average Latency \(s\):\s+" + _NUM)
    grab("min_latency_s", r"Average Latency \(s\):\s+[0-9.]+\s+\(min\s+" + _NUM)
    grab("max_latency_s", r"Average Latency \(s\):.*max\s+" + _NUM)
    grab("stddev_latency_s", r"Latency StdDev \(s\):\s+" + _NUM)
    grab("avg_request_bytes", r"Average packet size:\s+request\s+(\d+)", int)
    grab("avg_response_bytes", r"Average packet size:.*response\s+(\d+)", int)
    mm = re.search(r"Response codes:\s+(.*)", text)
    if mm:
        codes = {}
        for part in mm.group(1).split(","):
            m2 = re.match(r"\s*([A-Z]+)\s+(\d+)", part)
            if m2:
                codes[m2.group(1)] = int(m2.group(2))
        out["rcodes"] = codes
    if "qps" not in out:
        raise ValueError("no 'Queries per second' line in dnsperf output")
    return out


# dnsperf -v prints one line per answer:  "> NOERROR contoso.azurecr.test. A 0.000123"
# (and "> T ..." for a query that timed out).
_VERBOSE = re.compile(r"^> ([A-Z]+) (\S+) (\S+) ([0-9]+\.[0-9]+)\s*$")


def parse_verbose_latencies(text: str) -> tuple[list[float], dict[str, int]]:
    lat, codes = [], {}
    for line in text.splitlines():
        mm = _VERBOSE.match(line)
        if not mm:
            continue
        code = mm.group(1)
        codes[code] = codes.get(code, 0) + 1
        if code != "T":
            lat.append(float(mm.group(4)))
    return lat, codes


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(1, math.ceil(p / 100 * len(s)))
    return s[k - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------------------------
# The printed table, and its parser (for the optional end-to-end test).

TABLE_HEADER = ("server", "qps", "srv_cpu", "mean_ms", "mean_ms@rate", "p99_ms@rate", "lost", "geotm/peer")


def format_table(rows: list[dict]) -> str:
    def cell(v, fmt):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return fmt.format(v)

    body = [TABLE_HEADER]
    for r in rows:
        body.append((
            r["server"],
            cell(r.get("qps"), "{:.0f}"),
            cell(r.get("cpu"), "{:.2f}"),
            cell(r.get("mean_ms"), "{:.3f}"),
            cell(r.get("rate_mean_ms"), "{:.3f}"),
            cell(r.get("p99_ms"), "{:.3f}"),
            cell(r.get("lost"), "{:d}"),
            cell(r.get("ratio"), "{:.2f}"),
        ))
    widths = [max(len(row[i]) for row in body) for i in range(len(TABLE_HEADER))]
    lines = []
    for i, row in enumerate(body):
        lines.append("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(row)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_table(text: str) -> list[dict]:
    """Rows of the table printed by format_table, found anywhere in `text`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:2] == ["server", "qps"]:
            break
    else:
        raise ValueError("no table header in output")
    rows = []
    for line in lines[i + 2:]:
        if not line.strip():
            break
        parts = line.split()
        if len(parts) < 8:
            break
        name = " ".join(parts[:-7])
        vals = parts[-7:]

        def num(s, conv=float):
            return None if s == "-" else conv(s)

        rows.append({"server": name, "qps": num(vals[0]), "cpu": num(vals[1]), "mean_ms": num(vals[2]),
                     "rate_mean_ms": num(vals[3]), "p99_ms": num(vals[4]), "lost": num(vals[5], int),
                     "ratio": num(vals[6])})
    return rows
