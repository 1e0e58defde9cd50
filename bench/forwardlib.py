"""The forwarding benchmark's pure parts (bench/forward.py runs them): the upstream's zone of outside
names and the query file, the configs of the three forwarders in front of it (geotm's dnsd with a
`forward:` section, unbound, dnsmasq), the expected answers, the table rows and the issue's targets.
No processes, no network: tests/test_bench_forward.py checks them without any server installed."""
from __future__ import annotations

import ipaddress
import math
import random
from pathlib import Path

import yaml

import dnsperfout
from peerconfig import geotm_bench_document

UPSTREAM_ZONE = "example.net"        # outside geotm's zone (azurecr.test): forwarded
NAMES = 1000                         # hostN.example.net, N < NAMES
TTL = 3600                           # every record's: longer than a run, so nothing expires while measured
AAAA_EVERY = 5                       # every 5th name also has an AAAA, asked in the query file too
FIRST_A = ipaddress.ip_address("198.18.0.0")       # RFC 2544's benchmarking range: 131,072 addresses
FIRST_AAAA = ipaddress.ip_address("2001:db8::")    # RFC 3849's documentation prefix
CACHE_ENTRIES = 10_000               # each forwarder's cache bound: far above the query file's questions
SERVERS = ("geotm", "unbound", "dnsmasq")
# the targets: geotm's cache hits at least half of unbound's qps, and more than dnsmasq's
TARGET_VS_UNBOUND = 0.5
TARGET_VS_DNSMASQ = 1.0


def host_name(i: int) -> str:
    return f"host{i}.{UPSTREAM_ZONE}."


def host_index(name: str) -> int:
    label = name.lower().split(".", 1)[0]
    if not label.startswith("host") or not label[4:].isdigit():
        raise ValueError(f"not a bench name: {name}")
    return int(label[4:])


def expected(name: str, qtype: str) -> list[str]:
    """The rdata the upstream holds for a bench question (empty: none of that type)."""
    i = host_index(name)
    if qtype == "A":
        return [str(FIRST_A + i)]
    if qtype == "AAAA" and i % AAAA_EVERY == 0:
        return [str(FIRST_AAAA + i)]
    return []


def upstream_zone(names: int = NAMES, ttl: int = TTL) -> str:
    """The zone file Knot serves as the upstream: SOA, NS and `names` hosts (A; AAAA for every
    AAAA_EVERY-th), every TTL `ttl`."""
    if not 0 < names <= 131_072:
        raise ValueError("names: 1 to 131072 (the 198.18.0.0/15 range)")
    out = [f"$ORIGIN {UPSTREAM_ZONE}.", f"$TTL {ttl}",
           f"@ IN SOA ns1 hostmaster 1 7200 900 1209600 {ttl}", "@ IN NS ns1", "ns1 IN A 127.0.0.1"]
    for i in range(names):
        out.append(f"host{i} IN A {FIRST_A + i}")
        if i % AAAA_EVERY == 0:
            out.append(f"host{i} IN AAAA {FIRST_AAAA + i}")
    return "\n".join(out) + "\n"


def query_lines(names: int = NAMES, seed: int = 7) -> list[str]:
    """dnsperf's query file: every name's A, and the AAAA of the names that have one, shuffled with a
    fixed seed. Every question has an answer, so after one pass every query is a cache hit."""
    lines = [f"{host_name(i)} A" for i in range(names)]
    lines += [f"{host_name(i)} AAAA" for i in range(0, names, AAAA_EVERY)]
    random.Random(seed).shuffle(lines)
    return lines


def sample(lines: list[str], count: int = 20) -> list[tuple[str, str]]:
    """`count` questions spread evenly over the query file, for the dig checks."""
    step = max(1, len(lines) // count)
    return [tuple(line.split()) for line in lines[::step][:count]]


# --------------------------------------------------------------------------------------------
# the forwarders' configs


def geotm_document(config_path: str | Path, tmp: str | Path, port: int, upstream_port: int) -> dict:
    """geotm's bench copy of its config (peerconfig.geotm_bench_document: no health feed, admin off)
    plus forwarding to the upstream for loopback clients, with the other forwarders' cache bound."""
    doc = geotm_bench_document(config_path, tmp, port)
    doc["forward"] = {"upstreams": [f"127.0.0.1:{upstream_port}"], "clients": ["127.0.0.0/8"],
                      "cache": {"max_entries": CACHE_ENTRIES}}
    return doc


def geotm_config(config_path: str | Path, tmp: str | Path, port: int, upstream_port: int) -> str:
    return yaml.safe_dump(geotm_document(config_path, tmp, port, upstream_port), sort_keys=False)


def unbound_config(port: int, upstream_port: int, base: str) -> str:
    """unbound 1.17: one thread, the cache on (its defaults: 4 MB of messages, 4 MB of RRsets), the
    upstream zone forwarded to Knot, no DNSSEC validation (module-config "iterator": geotm does not
    validate either, so neither pays for it)."""
    return f"""server:
    interface: 127.0.0.1
    port: {port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{base}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    do-ip6: no
    num-threads: 1
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
remote-control:
    control-enable: no
forward-zone:
    name: "{UPSTREAM_ZONE}"
    forward-addr: 127.0.0.1@{upstream_port}
"""


def dnsmasq_config(port: int, upstream_port: int, pid_file: str) -> str:
    """dnsmasq 2.90: only the upstream zone forwarded (server=/zone/), nothing from /etc/resolv.conf or
    /etc/hosts, a cache of CACHE_ENTRIES names, as many upstream queries at once as geotm's
    max_in_flight default; no DHCP (no dhcp-range)."""
    return f"""port={port}
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
no-poll
server=/{UPSTREAM_ZONE}/127.0.0.1#{upstream_port}
cache-size={CACHE_ENTRIES}
dns-forward-max=1000
pid-file={pid_file}
log-facility=-
"""


# --------------------------------------------------------------------------------------------
# rows, targets, the table


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return dnsperfout.median(values) if values else None


def build_rows(results: dict) -> list[dict]:
    """One row per measured server: medians of its runs (qps, server CPU in cores, mean latency at
    full load, p50/p99 at the fixed rate), CPU microseconds per query (all, user only, at the fixed
    rate), lost queries, the response size, the upstream's CPU during the measured runs (about 0 when
    every query was a cache hit), and geotm's ratios."""
    rows = []
    for name, res in results["servers"].items():
        runs = [r for r in res.get("runs", []) if "qps" in r]
        if not runs:
            continue
        latency = res.get("latency") or {}
        lat_runs = [r for r in latency.get("runs", []) if r.get("p99_ms") is not None]
        qps = _median([r["qps"] for r in runs])
        cpu = _median([r.get("server_cpu_cores") for r in runs])
        user = _median([r.get("server_user_cores") for r in runs])
        rate_us = [r["server_cpu_cores"] * 1e6 / r["summary"]["qps"] for r in latency.get("runs", [])
                   if r.get("server_cpu_cores") and r.get("summary", {}).get("qps")]
        rows.append({
            "server": name, "qps": qps, "cpu": cpu,
            "us_per_query": cpu * 1e6 / qps if cpu and qps else None,
            "user_us_per_query": user * 1e6 / qps if user and qps else None,
            "rate_us_per_query": _median(rate_us),
            "mean_ms": _median([r["avg_latency_s"] * 1000 for r in runs if "avg_latency_s" in r]),
            "p50_ms": _median([r["p50_ms"] for r in lat_runs]),
            "p99_ms": _median([r["p99_ms"] for r in lat_runs]),
            "saturated": bool(latency.get("saturated")),
            "lost": sum(r.get("queries_lost", 0) for r in runs),
            "response_bytes": _median([r.get("avg_response_bytes") for r in runs]),
            "upstream_cpu": _median([r.get("upstream_cpu_cores") for r in runs]),
        })
    geotm = next((r for r in rows if r["server"] == "geotm"), None)
    for row in rows:
        row["ratio"] = geotm["qps"] / row["qps"] if geotm and row is not geotm else None
        row["cpu_ratio"] = (row["us_per_query"] / geotm["us_per_query"]
                            if geotm and row is not geotm and row["us_per_query"] and geotm["us_per_query"]
                            else None)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The issue's two targets, each with the measured ratio and whether it is met (None: not
    measured). The target is on qps; the same ratio per busy server core is given beside it."""
    by_name = {r["server"]: r for r in rows}
    out = []
    for peer, floor, what in (("unbound", TARGET_VS_UNBOUND, "at least half of unbound's qps"),
                              ("dnsmasq", TARGET_VS_DNSMASQ, "more qps than dnsmasq")):
        row = by_name.get(peer)
        ratio = row["ratio"] if row else None
        met = None if ratio is None else (ratio >= floor if floor < 1 else ratio > floor)
        out.append({"target": f"geotm cache hits: {what}", "peer": peer, "ratio": ratio, "floor": floor,
                    "met": met, "cpu_ratio": row["cpu_ratio"] if row else None})
    return out


TABLE_HEADER = ("server", "qps", "srv_cpu", "us/q", "user_us/q", "mean_ms", "p50_ms@rate", "p99_ms@rate",
                "us/q@rate", "lost", "up_cpu", "geotm/peer")


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def format_table(rows: list[dict]) -> str:
    body = [TABLE_HEADER]
    for r in rows:
        body.append((r["server"], _cell(r["qps"], "{:.0f}"), _cell(r["cpu"], "{:.2f}"),
                     _cell(r["us_per_query"], "{:.1f}"), _cell(r["user_us_per_query"], "{:.1f}"),
                     _cell(r["mean_ms"], "{:.3f}"), _cell(r["p50_ms"], "{:.3f}"), _cell(r["p99_ms"], "{:.3f}"),
                     _cell(r["rate_us_per_query"], "{:.1f}"), _cell(r["lost"], "{:d}"),
                     _cell(r["upstream_cpu"], "{:.2f}"), _cell(r["ratio"], "{:.2f}")))
    return dnsperfout.aligned(body)


def format_targets(checks: list[dict]) -> str:
    lines = []
    for c in checks:
        if c["met"] is None:
            lines.append(f"{c['target']}: not measured")
            continue
        per_core = f"; per busy server core {c['cpu_ratio']:.2f}" if c["cpu_ratio"] else ""
        lines.append(f"{c['target']}: geotm/{c['peer']} = {c['ratio']:.2f} (needs "
                     f"{'>=' if c['floor'] < 1 else '>'} {c['floor']:g}{per_core}): "
                     f"{'MET' if c['met'] else 'NOT MET'}")
    return "\n".join(lines)
