"""Checks of bench/run's CPU reporting (CPU per answered query, qps per busy core, which side was the
limit, geotm's ratios to each peer, the printed table), of the many-source load generator
(bench/manysrc.c: its query file, and a short run against a Python responder counting source
addresses) and of bench/tail.py's parts (the stand-in health feed, --dnsd-src, its table). No peer
server needed."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import benchlib as bl  # noqa: E402
import dnsperfout as dp  # noqa: E402
import manysrc  # noqa: E402
import peerconfig  # noqa: E402
import tail  # noqa: E402
from measure import cpu_figures  # noqa: E402
from report import build_rows, cpu_ratio_lines, limit_of  # noqa: E402

from dnsd.config import load_config  # noqa: E402
from dnsd.protocol import wire  # noqa: E402
from dnsd.routing.health import FeedDocument, Status  # noqa: E402


@pytest.mark.parametrize("server,load,limit", [
    (0.99, 0.40, "server"),    # the server's core was full
    (0.95, 0.99, "server"),    # both full: the server is still the one measured
    (0.60, 0.98, "load"),      # the load generator's core was full, the server's was not
    (0.60, 0.50, "neither"),   # neither: the machine (a shared one) held both back
    (None, 0.99, None),        # no CPU figure for the server
    (0.60, None, None),
])
def test_which_side_was_the_limit(server, load, limit):
    assert limit_of(server, load) == limit


def test_cpu_figures_per_answered_query():
    f = cpu_figures(server_s=1.5, load_s=2.0, wall_s=4.0, answered=300_000, run_s=3.0)
    assert f["cpu_us_per_query"] == pytest.approx(5.0)
    assert f["qps_per_core"] == pytest.approx(200_000)
    assert f["server_cpu_cores"] == pytest.approx(0.5)   # over dnsperf's own run time
    assert f["load_cpu_cores"] == pytest.approx(0.5)     # over the wall time it took
    none = cpu_figures(server_s=0.0, load_s=1.0, wall_s=1.0, answered=0)
    assert none["cpu_us_per_query"] is None and none["qps_per_core"] is None


def _run(qps, completed, server_s, load_cores, server_cores):
    return {"qps": qps, "queries_completed": completed, "queries_lost": 0, "avg_latency_s": 0.001,
            "server_cpu_cores": server_cores, "load_cpu_cores": load_cores,
            "cpu_us_per_query": server_s / completed * 1e6, "qps_per_core": completed / server_s}


def test_rows_carry_cpu_per_query_and_ratios():
    results = {"servers": {
        "geotm": {"variants": {"main": {"runs": [_run(100_000, 300_000, 1.8, 0.7, 0.99)]},
                               "src1k": {"runs": [_run(90_000, 270_000, 1.89, 0.6, 0.99)]}},
                  "latency": {"mean_ms": 0.05, "p99_ms": 0.13, "p999_ms": 0.9, "cpu_us_per_query": 7.0}},
        "knot": {"variants": {"main": {"runs": [_run(150_000, 450_000, 2.25, 0.97, 0.83)]},
                              "src1k": {"runs": [_run(140_000, 420_000, 2.1, 0.5, 0.7)]}},
                 "latency": {"mean_ms": 0.04, "p99_ms": 0.07, "p999_ms": 1.3, "cpu_us_per_query": 5.0}},
    }}
    rows = {r["server"]: r for r in build_rows(results)}
    assert list(rows) == ["geotm", "geotm 1k-src", "knot", "knot 1k-src"]
    assert rows["geotm"]["us_per_query"] == pytest.approx(6.0) and rows["knot"]["us_per_query"] == pytest.approx(5.0)
    assert rows["knot"]["cpu_ratio"] == pytest.approx(1.2) and rows["knot"]["ratio"] == pytest.approx(100 / 150)
    assert rows["knot 1k-src"]["cpu_ratio"] == pytest.approx(7.0 / 5.0)
    assert rows["geotm"]["cpu_ratio"] is None and rows["geotm"]["limit"] == "server"
    assert rows["knot"]["limit"] == "load" and rows["knot 1k-src"]["limit"] == "neither"
    assert (rows["geotm"]["p99_ms"], rows["geotm"]["p999_ms"]) == (0.13, 0.9)
    assert cpu_ratio_lines(list(rows.values())) == [
        "geotm CPU/query = 1.20 x knot (6.00 us against 5.00 us)",
        "geotm 1k-src CPU/query = 1.40 x knot (7.00 us against 5.00 us)",
    ]
    parsed = {r["server"]: r for r in dp.parse_table(dp.format_table(list(rows.values())))}
    assert parsed["knot 1k-src"]["cpu_ratio"] == 1.4 and parsed["knot"]["limit"] == "load"
    assert parsed["geotm"]["p999_ms"] == 0.9 and parsed["geotm"]["qps_per_core"] == 166667


def test_manysrc_query_file_is_the_query_mix(tmp_path):
    model = bl.load_model(ROOT / "config" / "example.yaml")
    lines = bl.query_lines(model)
    path = tmp_path / "queries.bin"
    manysrc.write_query_file(lines, path)
    data, messages = path.read_bytes(), []
    while data:
        size = int.from_bytes(data[:2], "big")
        messages.append(data[2:2 + size])
        data = data[2 + size:]
    assert len(messages) == len(lines)
    for line, message in zip(lines, messages):
        query = wire.parse_query(message)
        assert f"{query.qname()} {bl.type_name(query.qtype)}".lower() == line.lower().replace(". ", " ")
    assert manysrc.sources()[:2] == ["127.0.1.1", "127.0.1.2"] and manysrc.sources()[-1] == "127.0.4.232"


def test_manysrc_sends_from_many_addresses(tmp_path):
    """manysrc against a responder on loopback: every query answered, from (nearly) every address."""
    require_tool("gcc", "to build bench/manysrc.c")
    binary = manysrc.build(tmp_path)
    assert binary is not None
    queries = tmp_path / "queries.bin"
    manysrc.write_query_file(["a.example. A", "b.example. AAAA"], queries)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    seen: set[str] = set()
    answered = [0]
    done = threading.Event()

    def respond():
        while not done.is_set():
            try:
                data, (host, port) = sock.recvfrom(512)
            except socket.timeout:
                continue
            seen.add(host)
            sock.sendto(data[:2] + bytes([0x84, 0x03]) + data[4:], (host, port))  # QR AA, NXDOMAIN
            answered[0] += 1

    thread = threading.Thread(target=respond, daemon=True)
    thread.start()
    try:
        r = subprocess.run([str(binary), "127.0.0.1", str(sock.getsockname()[1]), str(queries), "127.0.9.1", "50",
                            "1", "4"], capture_output=True, text=True, timeout=30)
    finally:
        done.set()
        thread.join(5)
        sock.close()
    assert r.returncode == 0, r.stderr
    out = dp.parse_dnsperf(r.stdout)
    assert out["queries_completed"] == answered[0] > 100
    assert out["queries_lost"] == 0 and out["rcodes"] == {"NXDOMAIN": answered[0]}
    assert len(seen) >= 45 and all(h.startswith("127.0.9.") for h in seen)


@pytest.mark.parametrize("argv", [
    ["127.0.0.1", "53", "/nonexistent", "127.0.1.1", "1000", "1", "200"],      # no query file
    ["127.0.0.1", "53", "/dev/null", "127.0.1.1", "0", "1", "200"],            # no sources
    ["127.0.0.1", "53", "/dev/null", "127.0.1.1", "1000", "601", "200"],       # longer than its bound
])
def test_manysrc_refuses_bad_arguments(tmp_path, argv):
    require_tool("gcc", "to build bench/manysrc.c")
    binary = manysrc.build(tmp_path)
    r = subprocess.run([str(binary), *argv], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and r.stderr


def test_tail_health_feed_stand_in_and_config(tmp_path):
    """bench/tail.py's geotm+feed row: a valid config polling the stand-in, which serves every
    replica online and answers 304 to its own ETag, as probes does."""
    model = bl.load_model(ROOT / "config" / "example.yaml")
    feed = tail.serve_health_feed(model)
    try:
        url = f"http://127.0.0.1:{feed.server_port}/v1/health"
        with urllib.request.urlopen(url, timeout=5) as response:
            document = FeedDocument.from_json(json.loads(response.read()))
            etag = response.headers["ETag"]
        assert {key: h.status for key, h in document.endpoints.items()} == {
            ("contoso", rep): Status.ONLINE for rep in ("eastus", "westeurope", "southeastasia")}
        again = urllib.request.Request(url, headers={"If-None-Match": etag})
        with pytest.raises(urllib.error.HTTPError) as not_modified:
            urllib.request.urlopen(again, timeout=5)
        assert not_modified.value.code == 304
    finally:
        feed.shutdown()
    config_file = tmp_path / "geotm.yaml"
    config_file.write_text(peerconfig.geotm_bench_config(ROOT / "config" / "example.yaml", tmp_path, 5353))
    tail.with_health_feed(config_file, "http://127.0.0.1:9/v1/health", tmp_path)
    health = load_config(config_file).health
    assert health.feeds == ("http://127.0.0.1:9/v1/health",) and health.poll_interval == 1.0
    assert health.state_file == str(tmp_path / "dnsd-health.json")


def test_tail_runs_an_older_dnsd(tmp_path):
    (tmp_path / "dnsd").mkdir()
    (tmp_path / "dnsd" / "cli.py").write_text("")
    argv = tail.older_dnsd(["taskset", "-c", "0", "/venv/bin/dnsd", "serve", "--config", "c.yaml"], tmp_path)
    assert argv[:4] == ["taskset", "-c", "0", sys.executable] and argv[-3:] == ["serve", "--config", "c.yaml"]
    assert repr(str(tmp_path.resolve())) in argv[5]
    with pytest.raises(SystemExit):
        tail.older_dnsd(argv, tmp_path / "nowhere")


def test_tail_table_shows_medians():
    runs = [{"p50_ms": 0.06, "p99_ms": p99, "p999_ms": p99 * 2, "server_cpu_cores": 0.3} for p99 in (0.1, 0.3, 0.2)]
    table = tail.tail_table({"geotm": {"rate": 20000, "runs": runs}}).splitlines()
    assert table[0].split() == ["server", "rate", "runs", "p50_ms", "p99_ms", "p999_ms", "srv_cpu"]
    assert table[1].split() == ["geotm", "20000", "3", "0.060", "0.200", "0.400", "0.30"]
