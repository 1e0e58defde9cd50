"""Checks of the benchmark harness (bench/) that need no peer server: the query mix, the generated
Knot / PowerDNS / gdnsd configs, and the dnsperf output parsers against captured dnsperf 2.10
output. One optional end-to-end test runs bench/run when knotd and dnsperf are installed."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import require_tool, unavailable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import benchlib as bl  # noqa: E402
import dnsperfout as dp  # noqa: E402
import peerconfig as pc  # noqa: E402

FIXTURES = BENCH / "fixtures"


@pytest.fixture(scope="module")
def model() -> bl.ZoneModel:
    return bl.load_model(ROOT / "config" / "example.yaml")


def test_model_matches_example_config(model):
    assert model.zone == "azurecr.test"
    assert model.default_replica == "eastus"
    reps = {r.name: r.addresses for r in model.registries[0].replicas}
    assert reps == {"eastus": ("127.0.0.11",), "westeurope": ("127.0.0.12",), "southeastasia": ("127.0.0.13",)}


@pytest.mark.parametrize("total", [1000, 2000, 3333])
def test_query_mix(model, total):
    lines = bl.query_lines(model, total=total)
    assert len(lines) == total
    counts: dict[str, int] = {}
    for line in lines:
        name, qtype = line.split()
        assert name.endswith(".azurecr.test.") and qtype in ("A", "AAAA")
        c = bl.classify_query(model, line)
        counts[c] = counts.get(c, 0) + 1
    for kind, share in bl.MIX.items():
        assert abs(counts.get(kind, 0) / total - share) <= 0.01, (kind, counts)
    # regional and data names cover every replica; global AAAA is the only AAAA
    names = {line.split()[0] for line in lines}
    for rep in ("eastus", "westeurope", "southeastasia"):
        assert f"contoso.{rep}.geo.azurecr.test." in names
        assert f"contoso.{rep}.data.azurecr.test." in names
    assert {line for line in lines if line.endswith("AAAA")} == {"contoso.azurecr.test. AAAA"}


def test_query_mix_is_shuffled_and_deterministic(model):
    a, b = bl.query_lines(model), bl.query_lines(model)
    assert a == b
    assert a[:20] != sorted(a[:20]) or len(set(a[:20])) > 1


def _chain_lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line and not line.startswith(";")]


def test_static_zone_chain(model):
    z = _chain_lines(pc.static_zone(model))
    assert "contoso 300 IN CNAME contoso.privatelink.azurecr.test." in z
    assert "contoso.privatelink 300 IN CNAME contoso.tm.azurecr.test." in z
    assert "contoso.tm 30 IN CNAME contoso.eastus.reg.azurecr.test." in z
    for rep, addr in (("eastus", "127.0.0.11"), ("westeurope", "127.0.0.12"), ("southeastasia", "127.0.0.13")):
        assert f"contoso.{rep}.geo 300 IN CNAME contoso.{rep}.reg.azurecr.test." in z
        assert f"contoso.{rep}.data 300 IN CNAME contoso.{rep}.reg.azurecr.test." in z
        assert f"contoso.{rep}.reg 10 IN A {addr}" in z
    assert any(line.startswith("@ 3600 IN SOA ns1.azurecr.test. hostmaster.azurecr.test.") and line.endswith(" 60")
               for line in z)
    assert "@ 3600 IN NS ns1.azurecr.test." in z


def test_pdns_lua_zone_weighted_pick_over_every_replica(model):
    z = pc.pdns_lua_zone(model)
    tm = [line for line in z.splitlines() if line.startswith("contoso.tm ")]
    assert len(tm) == 1
    assert " IN LUA CNAME \"pickwhashed(" in tm[0]
    for rep in ("eastus", "westeurope", "southeastasia"):
        assert f"{{100, 'contoso.{rep}.reg.azurecr.test.'}}" in tm[0]
        assert f"contoso.{rep}.reg 10 IN A" in z
    assert "contoso.privatelink 300 IN CNAME contoso.tm.azurecr.test." in z
    conf = pc.pdns_config(5300, "/tmp/x", lua=True)
    assert "enable-lua-records=yes" in conf and "launch=bind" in conf and "local-port=5300" in conf
    assert "enable-lua-records" not in pc.pdns_config(5300, "/tmp/x", lua=False)
    assert 'zone "azurecr.test"' in pc.pdns_named_conf(model, "/tmp/x/zone")


def test_gdnsd_zone_and_config(model):
    z = _chain_lines(pc.gdnsd_zone(model))
    assert "contoso 300 IN CNAME contoso.privatelink.azurecr.test." in z
    assert "contoso.privatelink 300 IN CNAME contoso.tm.azurecr.test." in z
    assert "contoso.tm 10/10 DYNA weighted!contoso_tm" in z
    for rep in ("eastus", "westeurope", "southeastasia"):
        assert f"contoso.{rep}.geo 300 IN CNAME contoso.{rep}.reg.azurecr.test." in z
        assert f"contoso.{rep}.data 300 IN CNAME contoso.{rep}.reg.azurecr.test." in z
    assert not any(" CAA " in line for line in z)          # CAA only in RFC 3597 form
    assert any(" TYPE257 " in line for line in z)
    conf = pc.gdnsd_config(model, 5301, "/tmp/r", "/tmp/s", "/tmp/h")
    for rep, addr in (("eastus", "127.0.0.11"), ("westeurope", "127.0.0.12"), ("southeastasia", "127.0.0.13")):
        assert re.search(rf"{rep} => \[ {re.escape(addr)}, 100 \]", conf)
    assert "127.0.0.1:5301" in conf and "plugin => extfile" in conf and "experimental_no_chain => false" in conf
    health = pc.gdnsd_health_file(model)
    assert health.split("\n")[:3] == ["127.0.0.11 => UP", "127.0.0.12 => UP", "127.0.0.13 => UP"]


def test_knot_config(model):
    conf = pc.knot_config(model.zone, 5302, "/tmp/k", "/tmp/k/azurecr.test.zone")
    assert "listen: 127.0.0.1@5302" in conf and "domain: azurecr.test" in conf


def test_geotm_bench_config(tmp_path):
    import yaml

    doc = yaml.safe_load(pc.geotm_bench_config(ROOT / "config" / "example.yaml", tmp_path, 5303))
    assert "feeds" not in doc["health"]
    assert doc["admin"]["listen"] == "off"
    assert doc["server"]["listen"] == ["127.0.0.1:5303"]
    for path in (doc["health"]["state_file"], doc["admin"]["state_file"], doc["probes"]["state_file"]):
        assert path.startswith(str(tmp_path))


def test_geotm_bench_config_is_valid(tmp_path):
    dnsd = ROOT / ".venv" / "bin" / "dnsd"
    if not dnsd.exists():
        unavailable("no .venv/bin/dnsd (scripts/test makes the .venv)")
    cfg = tmp_path / "geotm.yaml"
    cfg.write_text(pc.geotm_bench_config(ROOT / "config" / "example.yaml", tmp_path, 5303))
    r = subprocess.run([str(dnsd), "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ecs_option_hex():
    assert bl.ecs_option_hex("203.0.113.0/24") == "00011800cb0071"
    assert bl.ecs_option_hex("198.51.100.7/32") == "00012000c6336407"
    assert bl.ecs_option_hex("2001:db8:100::/48") == "0002300020010db80100"


def test_parse_dnsperf_captured_summary():
    out = dp.parse_dnsperf((FIXTURES / "dnsperf-2.10-summary.txt").read_text())
    assert out["queries_sent"] == 416190
    assert out["queries_completed"] == 416188
    assert out["queries_lost"] == 2
    assert out["qps"] == pytest.approx(208015.786064)
    assert out["avg_latency_s"] == pytest.approx(0.000887)
    assert out["min_latency_s"] == pytest.approx(0.000012)
    assert out["max_latency_s"] == pytest.approx(0.017059)
    assert out["stddev_latency_s"] == pytest.approx(0.001320)
    assert out["run_time_s"] == pytest.approx(2.000752)
    assert out["rcodes"] == {"NOERROR": 395378, "NXDOMAIN": 20810}
    assert (out["avg_request_bytes"], out["avg_response_bytes"]) == (41, 136)


def test_parse_dnsperf_verbose_latencies():
    text = (FIXTURES / "dnsperf-2.10-verbose.txt").read_text()
    lat, codes = dp.parse_verbose_latencies(text)
    summary = dp.parse_dnsperf(text)
    assert len(lat) == summary["queries_completed"] == 300
    assert codes == summary["rcodes"]
    assert sum(lat) / len(lat) == pytest.approx(summary["avg_latency_s"], abs=2e-6)
    assert min(lat) == pytest.approx(summary["min_latency_s"]) and max(lat) == pytest.approx(summary["max_latency_s"])
    assert min(lat) <= dp.percentile(lat, 50) <= dp.percentile(lat, 99) <= max(lat)


def test_parse_dnsperf_rejects_garbage():
    with pytest.raises(ValueError):
        dp.parse_dnsperf("dnsperf: error: could not open file\n")


def test_percentile_nearest_rank():
    vals = [float(i) for i in range(1, 101)]
    assert dp.percentile(vals, 99) == 99.0
    assert dp.percentile(vals, 50) == 50.0
    assert dp.percentile([3.0], 99) == 3.0


def test_table_round_trip():
    rows = [
        {"server": "geotm", "qps": 47846.2, "cpu": 0.98, "mean_ms": 4.038, "rate_mean_ms": 2.67, "p99_ms": 14.39, "lost": 0,
         "ratio": None},
        {"server": "knot +ecs", "qps": 82900.8, "mean_ms": 2.134, "rate_mean_ms": None, "p99_ms": None, "lost": 2,
         "ratio": 0.39},
    ]
    parsed = dp.parse_table("preamble\n\n" + dp.format_table(rows) + "\n\ncommands:\n")
    assert [r["server"] for r in parsed] == ["geotm", "knot +ecs"]
    assert parsed[0]["qps"] == 47846 and parsed[0]["ratio"] is None and parsed[0]["p99_ms"] == 14.39
    assert parsed[0]["cpu"] == 0.98 and parsed[1]["cpu"] is None
    assert parsed[1]["lost"] == 2 and parsed[1]["ratio"] == 0.39 and parsed[1]["p99_ms"] is None


@pytest.mark.slow
def test_bench_run_end_to_end(tmp_path):
    for tool, package in (("knotd", "knot"), ("dnsperf", "dnsperf"), ("dig", "dnsutils"), ("taskset", "util-linux")):
        require_tool(tool, "for the real benchmark run against Knot", package=package)
    out_json = tmp_path / "latest.json"
    r = subprocess.run([str(BENCH / "run"), "--seconds", "1", "--runs", "1", "--only", "knot,geotm", "--skip-install",
                        "--json", str(out_json)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {row["server"]: row for row in dp.parse_table(r.stdout)}
    assert {"geotm", "knot"} <= set(rows)
    assert rows["geotm"]["qps"] > 0 and rows["knot"]["qps"] > 0
    assert rows["knot"]["ratio"] == pytest.approx(rows["geotm"]["qps"] / rows["knot"]["qps"], rel=0.02)
    assert rows["geotm"]["p99_ms"] is not None
    assert out_json.exists()


# -- the soak harness (bench/soak.py) -------------------------------------------------------------

import soak  # noqa: E402


def test_soak_mix_covers_every_kind_of_query():
    lines = {line for stream in soak.STREAMS for line in soak.query_lines(stream)}
    for wanted in ("contoso.azurecr.test A", "contoso.privatelink.azurecr.test A",
                   "contoso.eastus.geo.azurecr.test A", "contoso.eastus.data.azurecr.test A",
                   "contoso.azurecr.test AAAA", "nx0.azurecr.test A"):
        assert wanted in lines, wanted
    assert len({s.source for s in soak.STREAMS}) >= 3                      # several source addresses
    assert any(s.ecs for s in soak.STREAMS)                                # ECS on some queries
    assert any(s.source == "127.0.0.70" for s in soak.STREAMS)             # the corp-vnet view
    churn = max(soak.STREAMS, key=lambda s: s.nxdomain)
    from dnsd.serving.runtime import PACKET_CACHE_SIZE
    assert churn.nxdomain > PACKET_CACHE_SIZE                              # the packet cache fills and clears
    assert sum(s.share for s in soak.STREAMS) == pytest.approx(1.0)
    assert len({line for stream in soak.STREAMS for line in soak.query_lines(stream) if "nx" in line}) == \
        sum(s.nxdomain for s in soak.STREAMS if s.nx_prefix.startswith("nx"))  # distinct names per stream


@pytest.mark.parametrize("total", [50, 77, 1000, 61_234])
def test_soak_rates_add_up(total):
    rates = soak.split_qps(total)
    assert set(rates) == {s.name for s in soak.STREAMS}
    assert all(rate >= 1 for rate in rates.values()) and sum(rates.values()) == total


def test_soak_rate_too_low_is_refused():
    with pytest.raises(ValueError, match="at least 50"):
        soak.split_qps(7)


def test_soak_dnsperf_runs_are_bounded(tmp_path):
    ecs = next(s for s in soak.STREAMS if s.ecs)
    argv = soak.dnsperf_argv(ecs, 5399, tmp_path / "q.txt", 600, 12000)
    assert argv[argv.index("-l") + 1] == "600" and argv[argv.index("-Q") + 1] == "12000"
    assert argv[argv.index("-a") + 1] == ecs.source and argv[argv.index("-E") + 1] == "8:00011800cb0071"
    assert argv[:3] == ["taskset", "-c", "1"]
    assert "-Q" not in soak.dnsperf_argv(ecs, 5399, tmp_path / "q.txt", 10, None)   # the maximum run


def test_soak_config_has_no_rate_limit_feed_or_admin():
    import yaml
    example = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    example.setdefault("server", {})["rate_limit"] = {"responses_per_second": 5}
    data = soak.soak_config(example)
    assert "rate_limit" not in data["server"] and data["health"] == {} and data["admin"] == {"listen": "off"}
    assert data["server"]["listen"] == example["server"]["listen"]


def _result(sent, lost, **rcodes):
    return {"queries_sent": sent, "queries_lost": lost, "rcodes": rcodes}


FLAT = [(t, 50_000 + (t % 20) * 10) for t in range(0, 600, 10)]
SHARE = soak.expected_nx_share()


def _clean(total=100_000):
    nx = int(total * SHARE)
    return {"all": _result(total, 0, NOERROR=total - nx, NXDOMAIN=nx)}


@pytest.mark.parametrize("case,samples,results,failing", [
    ("clean", FLAT, _clean(), []),
    ("a lost answer", FLAT, {"all": _result(100_000, 1, NOERROR=95_000, NXDOMAIN=int(100_000 * SHARE))}, [0]),
    ("servfail", FLAT, {"all": _result(100, 0, NOERROR=100 - int(100 * SHARE), NXDOMAIN=int(100 * SHARE),
                                       SERVFAIL=1)}, [1]),
    ("no nxdomain", FLAT, {"all": _result(1000, 0, NOERROR=1000)}, [2]),
    ("growing memory", [(t, 50_000 + t * 10) for t in range(0, 600, 10)], _clean(), [3]),
    ("growth only in warm-up", [(t, 30_000 if t < 60 else 50_000) for t in range(0, 600, 10)], _clean(), []),
    ("packet-cache saw-tooth", [(t, 50_000 if t % 30 else 65_000) for t in range(0, 600, 10)], _clean(), []),
    ("rising peaks", [(t, (50_000 if t % 30 else 65_000) + t * 20) for t in range(0, 600, 10)], _clean(), [3]),
    ("too short", [(60, 50_000), (65, 50_000)], _clean(), [3]),
    ("nothing sent", FLAT, {"all": _result(0, 0)}, [0, 2]),
])
def test_soak_verdicts(case, samples, results, failing):
    verdicts = soak.judge(samples, results, warmup=60, max_growth=0.05)
    assert [i for i, (ok, _) in enumerate(verdicts) if not ok] == failing, verdicts


@pytest.mark.parametrize("sent,ok", [(600_000, True), (540_000, True), (530_000, False), (0, False)])
def test_soak_load_sustained(sent, ok):
    assert soak.sustained({"all": _result(sent, 0)}, qps=1000, seconds=600)[0] is ok

@pytest.mark.slow
def test_soak_runs_end_to_end(tmp_path):
    """A few seconds of the real thing: dnsd, five dnsperf streams, memory samples, the verdicts."""
    require_tool("dnsperf", "for the soak's load")
    require_tool("taskset", "to pin the soak's processes", package="util-linux")
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, str(BENCH / "soak.py"), "--seconds", "6", "--qps", "3000", "--warmup", "2",
                        "--sample", "1", "--max-growth", "0.5", "--json", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = __import__("json").loads(out.read_text())
    assert set(report["results"]) == {s.name for s in soak.STREAMS}
    sent = sum(x["queries_sent"] for x in report["results"].values())
    assert 6 * 3000 * 0.8 <= sent <= 6 * 3000 * 1.1                       # the rate asked for, bounded in time
    assert all(x["queries_lost"] == 0 for x in report["results"].values())
    assert len(report["rss_kib"]) >= 4 and "soak PASSED" in r.stdout
