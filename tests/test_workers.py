"""`dnsd serve --workers 2`: both workers answer on one address, a drain set through worker 0's admin
API reaches the other, SIGHUP reaches every worker, a killed worker is restarted, SIGTERM stops all;
every worker's query counters reach /metrics and the status page, and never go backwards when a
worker is killed and restarted (dnsd.serving.workerstats: the files, the base, the sums)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import dns.message
import pytest
import yaml

from dnsd.ops.statuspage import render_status_page
from dnsd.serving.stats import QueryStats
from dnsd.serving.workerstats import Totals, WorkerCounters, combined, counters_index
from tests import harness
from tests.dnstest import isolated_example, make_query


def global_answers(port: int, count: int) -> set[str]:
    """Ask from `count` different source ports: SO_REUSEPORT spreads them over the workers."""
    seen = set()
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(make_query("contoso.azurecr.test", ecs="198.51.100.0/24", qid=i).to_wire(),
                        ("127.0.0.1", port))
            seen.add(dns.message.from_wire(sock.recv(4096)).answer[-1][0].address)
    return seen


def worker_pids(log: str) -> dict[int, int]:
    pids = {}
    for line in log.splitlines():
        if '"worker_started"' in line:
            event = json.loads(line[line.index("{"):])
            pids[event["worker"]] = event["pid"]
    return pids


@pytest.mark.slow
def test_two_workers(tmp_path):
    config = isolated_example(tmp_path)
    with harness.dnsd(config, extra_args=["--workers", "2", "--log-format", "json"]) as supervisor:
        harness.wait_until(lambda: len(worker_pids(supervisor.log_text())) == 2, 10, "both workers started")
        pids = worker_pids(supervisor.log_text())
        assert set(pids) == {0, 1}
        assert global_answers(supervisor.port, 40) == {"127.0.0.12"}

        request = urllib.request.Request(
            f"http://127.0.0.1:{supervisor.admin_port}/v1/overrides", method="POST",
            data=json.dumps({"registry": "contoso", "replica": "westeurope", "kind": "drain"}).encode(),
            headers={"Authorization": "Bearer test-admin-token", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
        # followers re-read the override file each second: every worker drains it within a few
        harness.wait_until(lambda: global_answers(supervisor.port, 40) == {"127.0.0.11"}, 5,
                           "every worker drained westeurope")

        supervisor.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: supervisor.log_text().count('"config_reloaded"') >= 2, 5, "both workers reloaded")
        assert supervisor.log_text().count('"config_reloaded"') == 2

        os.kill(pids[1], signal.SIGKILL)
        assert supervisor.wait_for_log('"worker_exited"', 5)
        harness.wait_until(lambda: len(re.findall('"worker_started"', supervisor.log_text())) >= 3, 10,
                           "the killed worker restarted")
        assert len(re.findall('"worker_started"', supervisor.log_text())) == 3
        harness.wait_until(lambda: global_answers(supervisor.port, 20) == {"127.0.0.11"}, 5,
                           "the new worker read the overrides")

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(10) == 0


# -- the counters each worker publishes, in one process -------------------------------------------

def totals(answered: int, *, registry: str = "contoso", dropped: int = 0, accepted: int = 0) -> Totals:
    return Totals(counts={("", "global", 1, 0, registry, "westeurope"): answered}, dropped=dropped,
                  latency_counts=[answered] + [0] * 11, tcp={"accepted": accepted},
                  rrl={"dropped": [dropped, 0, 0]})


def test_totals_add_up_key_by_key_and_survive_their_file_form():
    total = totals(3, dropped=1, accepted=2) + totals(4, registry="fabrikam") + totals(5)
    assert total.counts == {("", "global", 1, 0, "contoso", "westeurope"): 8,
                            ("", "global", 1, 0, "fabrikam", "westeurope"): 4}
    assert (total.answered, total.dropped, total.latency_counts[0], total.tcp, total.rrl) == \
        (12, 1, 12, {"accepted": 2}, {"dropped": [1, 0, 0]})
    assert Totals.from_bytes(total.to_bytes(worker=3)) == ({"worker": 3, "format": 1}, total)


COUNTER_FILE_NAMES = [
    # (file name in the state dir, worker index or None: not a counters file)
    ("counters-0.marshal", 0),
    ("counters-12.marshal", 12),
    (".counters-1.marshal.x8k2", None),  # a write under way
    ("overrides.json", None),
    ("counters-a.marshal", None),
]


@pytest.mark.parametrize("name, index", COUNTER_FILE_NAMES)
def test_counters_files_are_known_by_name(name, index):
    assert counters_index(name) == index


def test_worker_0_adds_up_this_runs_files_and_a_restarted_worker_starts_from_its_predecessors(tmp_path):
    state = str(tmp_path)
    first = WorkerCounters(state, 1, supervisor=100)
    assert first.publish(totals(7))
    assert not first.publish(totals(7))  # unchanged: not written again
    stale = WorkerCounters(state, 2, supervisor=99)  # a file another supervisor's run left
    stale.publish(totals(1000))
    (tmp_path / "counters-3.marshal").write_bytes(b"not marshal")  # unreadable: left out, never an error
    zero = WorkerCounters(state, 0, supervisor=100)
    reports = zero.reports(totals(5))
    assert [(r.index, r.totals.answered) for r in reports] == [(0, 5), (1, 7)]
    assert combined(reports).answered == 12

    restarted = WorkerCounters(state, 1, supervisor=100)  # worker 1 killed after its last write
    assert restarted.base is not None and restarted.base.answered == 7
    restarted.publish(totals(2))  # its own answers since: on top of the predecessor's
    assert combined(zero.reports(totals(5))).answered == 14
    assert WorkerCounters(state, 2, supervisor=100).base is None  # another run's file is no base


def test_recent_shares_come_from_the_counts_given_every_workers_under_workers():
    stats = QueryStats()
    stats.count("", "global", 1, 0, "contoso", "eastus")  # this worker's own: all eastus
    every_worker = {("", "global", 1, 0, "contoso", "eastus"): 1, ("", "global", 1, 0, "contoso", "westeurope"): 3}
    stats.sample(0.0, {})
    assert stats.recent_shares(every_worker) == {("contoso", "eastus"): 0.25, ("contoso", "westeurope"): 0.75}
    assert QueryStats().recent_shares({}) == {}


QUERIES_DOC = {"config": {"version": "abc123", "source": "geotm.yaml"}, "generation": 1, "timeline": [],
               "health": {"feeds": [], "expired": False}, "registries": [],
               "queries": {"answered": 12, "dropped": 1, "workers": [
                   {"worker": 0, "pid": 10, "answered": 5, "dropped": 1, "age_seconds": 0.0},
                   {"worker": 1, "pid": 11, "answered": 7, "dropped": 0, "age_seconds": 0.4}]}}

PAGE_CASES = [
    # (details, shown, not shown)
    (True, ["12 queries answered, 1 dropped since start by 2 workers (worker 0: 5, worker 1: 7)"], []),
    (False, [], ["queries answered", "worker 1"]),  # the public page: health only
]


@pytest.mark.parametrize("details, shown, hidden", PAGE_CASES)
def test_the_status_page_shows_every_workers_queries_with_details_only(details, shown, hidden):
    html = render_status_page(QUERIES_DOC, details=details)
    for text in shown:
        assert text in html, text
    for text in hidden:
        assert text not in html, text


# -- across processes: a real supervisor with two workers ------------------------------------------

def ask_from_many_ports(port: int, count: int) -> int:
    """Send `count` global-name queries, each from its own source port (SO_REUSEPORT spreads them over
    the workers); returns how many were answered."""
    answered = 0
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(make_query("contoso.azurecr.test", qid=i).to_wire(), ("127.0.0.1", port))
            answered += bool(dns.message.from_wire(sock.recv(4096)).answer)
    return answered


def admin_get(port: int, path: str) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": "Bearer test-admin-token"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of a family's samples whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
            total += float(value)
    return total


def global_a_answers(admin_port: int) -> float:
    """geotm_queries for the test's queries only (the readiness probes ask SOA)."""
    return metric_sum(admin_get(admin_port, "/metrics").decode(), "geotm_queries_total", qtype="A",
                      registry="contoso")


def worker_answers(admin_port: int) -> dict[int, tuple[int, int]]:
    """worker -> (pid, answered) from /v1/status."""
    doc = json.loads(admin_get(admin_port, "/v1/status"))
    return {w["worker"]: (w["pid"], w["answered"]) for w in doc["queries"]["workers"]}


def test_every_workers_counters_reach_metrics_and_the_status_page_and_survive_a_restart(tmp_path):
    sent = 200
    config = isolated_example(tmp_path)
    admin_port = harness.free_port()  # in the config too, so `dnsd status --config` finds worker 0
    data = yaml.safe_load(config.read_text())
    data["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with harness.dnsd(config, extra_args=["--workers", "2", "--log-format", "json"],
                      admin_port=admin_port) as supervisor:
        admin = supervisor.admin_port
        harness.wait_until(lambda: supervisor.log_text().count('"dnsd_started"') == 2, 10, "both workers started")
        harness.wait_until(lambda: set(worker_answers(admin)) == {0, 1}, 5, "both workers report")
        pids = worker_pids(supervisor.log_text())
        before = worker_answers(admin)
        assert {index: pid for index, (pid, _) in before.items()} == pids

        assert ask_from_many_ports(supervisor.port, sent) == sent
        harness.wait_until(lambda: global_a_answers(admin) >= sent, 5, "every worker's answers in /metrics")
        assert global_a_answers(admin) == sent
        after = worker_answers(admin)
        assert all(after[i][1] - before[i][1] >= 10 for i in (0, 1)), (before, after)  # both answered
        doc = json.loads(admin_get(admin, "/v1/status"))
        metrics = admin_get(admin, "/metrics").decode()
        assert doc["queries"]["answered"] == sum(answered for _, answered in after.values()) \
            == metric_sum(metrics, "geotm_queries_total") >= sent
        assert metric_sum(metrics, "geotm_answer_seconds_count") == doc["queries"]["answered"]
        assert f"{doc['queries']['answered']} queries answered" in admin_get(admin, "/details").decode()
        printed = subprocess.run([sys.executable, "-m", "dnsd", "status", "--config", str(config)],
                                 capture_output=True, text=True, timeout=30)
        assert f"{doc['queries']['answered']} queries answered" in printed.stdout, printed.stderr
        assert "by 2 workers (worker 0: " in printed.stdout

        os.kill(pids[1], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # while it is gone and restarting: never below what was counted
            assert global_a_answers(admin) == sent
            workers = worker_answers(admin)
            if workers[1][0] != pids[1]:
                break
            time.sleep(0.1)
        assert worker_pids(supervisor.log_text())[1] == workers[1][0] != pids[1], "worker 1 restarted"
        assert workers[1][1] >= after[1][1]

        harness.wait_until(lambda: supervisor.log_text().count('"dnsd_started"') == 3, 10, "worker 1 serves again")
        assert ask_from_many_ports(supervisor.port, sent) == sent
        harness.wait_until(lambda: global_a_answers(admin) >= 2 * sent, 5, "the new answers in /metrics")
        assert global_a_answers(admin) == 2 * sent
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(10) == 0
