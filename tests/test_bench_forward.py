"""The forwarding benchmark (bench/forward.py, bench/forwardlib.py): the upstream zone and query file,
the three forwarders' configs (loaded by dnsd.config, checked by unbound-checkconf and dnsmasq --test),
the rows and the issue's targets on made-up results, and (slow) a short real run of geotm, unbound and
dnsmasq in front of Knot whose answers must agree. Performance targets live in the benchmark, not here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest

from dnsd.config import load_config
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import forwardlib as fl  # noqa: E402


def test_the_upstream_zone_holds_every_expected_record():
    zone = dns.zone.from_text(fl.upstream_zone(50), origin="example.net.", relativize=False)
    addresses = {}
    for name, ttl, rdata in zone.iterate_rdatas():
        if rdata.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) and name.to_text().startswith("host"):
            addresses.setdefault((name.to_text(), dns.rdatatype.to_text(rdata.rdtype)), []).append(rdata.to_text())
            assert ttl == fl.TTL
    assert len(addresses) == 50 + 10
    for (name, qtype), rdatas in addresses.items():
        assert rdatas == fl.expected(name, qtype)


# (name, type, the upstream's rdata)
EXPECTED_CASES = [
    ("host0.example.net.", "A", ["198.18.0.0"]),
    ("host0.example.net.", "AAAA", ["2001:db8::"]),
    ("HOST257.example.net.", "A", ["198.18.1.1"]),
    ("host3.example.net.", "AAAA", []),
    ("host10.example.net.", "AAAA", ["2001:db8::a"]),
    ("host999.example.net.", "A", ["198.18.3.231"]),
]


@pytest.mark.parametrize("name, qtype, rdata", EXPECTED_CASES)
def test_expected_answers(name, qtype, rdata):
    assert fl.expected(name, qtype) == rdata


@pytest.mark.parametrize("name", ["www.example.net.", "hostx.example.net.", "host.example.net."])
def test_names_outside_the_bench_are_refused(name):
    with pytest.raises(ValueError):
        fl.host_index(name)


@pytest.mark.parametrize("names", [0, 131_073])
def test_the_zone_fits_the_benchmarking_range(names):
    with pytest.raises(ValueError):
        fl.upstream_zone(names)


def test_query_file_asks_every_name_once_and_every_aaaa_once():
    lines = fl.query_lines(1000)
    assert len(lines) == len(set(lines)) == 1000 + 200
    assert sum(line.endswith(" AAAA") for line in lines) == 200
    assert all(fl.expected(*line.split()) for line in lines)  # every question has an answer: all hits
    assert lines == fl.query_lines(1000) and lines != sorted(lines)  # shuffled, the same every time


def test_sample_spreads_over_the_file():
    lines = fl.query_lines(1000)
    sample = fl.sample(lines, 20)
    assert len(sample) == len(set(sample)) == 20
    assert sample[0] == tuple(lines[0].split()) and sample[-1] == tuple(lines[19 * 60].split())


def test_geotm_config_forwards_to_the_upstream_for_loopback(tmp_path):
    path = tmp_path / "geotm.yaml"
    path.write_text(fl.geotm_config(ROOT / "config" / "example.yaml", tmp_path, 5353, 5399))
    config = load_config(path)
    assert config.forward.upstreams == (("127.0.0.1", 5399),)
    assert [str(n) for n in config.forward.clients] == ["127.0.0.0/8"]
    assert config.forward.cache.max_entries == fl.CACHE_ENTRIES
    assert config.forward.cache.max_ttl >= fl.TTL  # nothing expires during a run
    assert config.zone.name == "azurecr.test" and config.admin.listen is None


def test_unbound_config(tmp_path):
    checkconf = require_tool("unbound-checkconf", "to check the bench's unbound config", package="unbound")
    conf = fl.unbound_config(5353, 5399, str(tmp_path))
    for line in ("num-threads: 1", 'module-config: "iterator"', 'name: "example.net"',
                 "forward-addr: 127.0.0.1@5399", "port: 5353"):
        assert line in conf
    (tmp_path / "unbound.conf").write_text(conf)
    r = subprocess.run([checkconf, str(tmp_path / "unbound.conf")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dnsmasq_config(tmp_path):
    dnsmasq = require_tool("dnsmasq", "to check the bench's dnsmasq config", package="dnsmasq-base")
    conf = fl.dnsmasq_config(5353, 5399, str(tmp_path / "pid"))
    lines = conf.splitlines()
    for line in ("port=5353", "server=/example.net/127.0.0.1#5399", "no-resolv", f"cache-size={fl.CACHE_ENTRIES}"):
        assert line in lines
    assert not any(line.startswith("dhcp") for line in lines)
    (tmp_path / "dnsmasq.conf").write_text(conf)
    r = subprocess.run([dnsmasq, "--test", f"--conf-file={tmp_path / 'dnsmasq.conf'}"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def _results(qps: dict[str, float], cpu: float = 0.5) -> dict:
    servers = {}
    for name, value in qps.items():
        runs = [{"qps": value * f, "server_cpu_cores": cpu, "server_user_cores": cpu / 4, "avg_latency_s": 0.002,
                 "queries_lost": 1, "avg_response_bytes": 54, "upstream_cpu_cores": 0.0} for f in (0.9, 1.0, 1.1)]
        latency = {"runs": [{"p50_ms": 0.1, "p99_ms": p99, "server_cpu_cores": 0.2, "summary": {"qps": 20_000}}
                            for p99 in (1.0, 3.0, 2.0)], "saturated": False}
        servers[name] = {"runs": runs, "latency": latency}
    return {"servers": servers}


def test_rows_take_medians_and_ratios():
    rows = {r["server"]: r for r in fl.build_rows(_results({"geotm": 50_000, "unbound": 100_000}))}
    assert rows["geotm"]["qps"] == 50_000 and rows["geotm"]["ratio"] is None
    assert rows["unbound"]["ratio"] == 0.5 and rows["unbound"]["cpu_ratio"] == 0.5
    assert rows["geotm"]["us_per_query"] == pytest.approx(10.0)
    assert rows["geotm"]["user_us_per_query"] == pytest.approx(2.5)
    assert rows["geotm"]["rate_us_per_query"] == pytest.approx(10.0)  # 0.2 cores at 20,000 qps
    assert rows["geotm"]["p99_ms"] == 2.0 and rows["geotm"]["p50_ms"] == 0.1 and rows["geotm"]["lost"] == 3
    table = fl.format_table(list(rows.values()))
    assert table.splitlines()[0].split() == list(fl.TABLE_HEADER)
    assert table.splitlines()[2].split()[:5] == ["geotm", "50000", "0.50", "10.0", "2.5"]


# (geotm, unbound, dnsmasq qps) -> (half of unbound's met, faster than dnsmasq met); None: not measured
TARGET_CASES = [
    ({"geotm": 60_000, "unbound": 100_000, "dnsmasq": 50_000}, (True, True)),
    ({"geotm": 50_000, "unbound": 100_000, "dnsmasq": 50_000}, (True, False)),   # equal is not faster
    ({"geotm": 49_000, "unbound": 100_000, "dnsmasq": 120_000}, (False, False)),
    ({"geotm": 49_000, "unbound": 100_000}, (False, None)),
    ({"unbound": 100_000, "dnsmasq": 50_000}, (None, None)),
]


@pytest.mark.parametrize("qps, met", TARGET_CASES)
def test_targets(qps, met):
    checks = fl.targets(fl.build_rows(_results(qps)))
    assert tuple(c["met"] for c in checks) == met
    text = fl.format_targets(checks)
    assert text.count("NOT MET") == sum(m is False for m in met) and text.count("not measured") == met.count(None)


@pytest.mark.slow
def test_forward_bench_end_to_end(tmp_path):
    for tool, package in (("knotd", "knot"), ("unbound", "unbound"), ("dnsmasq", "dnsmasq-base"),
                          ("dnsperf", "dnsperf"), ("dig", "dnsutils"), ("taskset", "util-linux")):
        require_tool(tool, "for the real forwarding benchmark", package=package)
    out = tmp_path / "forward.json"
    r = subprocess.run([sys.executable, str(BENCH / "forward.py"), "--seconds", "1", "--runs", "1", "--rate", "2000",
                        "--names", "200", "--skip-install", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = {row["server"]: row for row in results["rows"]}
    assert set(rows) == set(fl.SERVERS)
    assert all(row["qps"] > 0 and row["p99_ms"] is not None for row in rows.values())
    answers = {name: results["servers"][name]["answers"] for name in fl.SERVERS}
    assert len(answers["geotm"]) == 20 and all(answers["geotm"].values())
    assert answers["geotm"] == answers["unbound"] == answers["dnsmasq"]
    assert results["same_as_unbound"] is True
    assert "geotm cache hits: at least half of unbound's qps" in r.stdout
