"""A YAML alias bomb sent to a running dnsd by reload (SIGHUP or the admin API): refused within a
second with the bound and file:line:col, the server's memory stays where it was, every query sent
meanwhile is answered, and the old config keeps serving."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import pytest

from tests import harness
from tests.dnstest import isolated_example

BOMB = """\
notes:  # 9 * 9^6 nodes from 8 lines once every alias is expanded
  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""
NAMES = ["contoso.azurecr.test", "contoso.eastus.geo.azurecr.test", "nothere.azurecr.test"]


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def ask(sock: socket.socket, port: int, name: str, qid: int) -> tuple | None:
    query = dns.message.make_query(name, "A", use_edns=False)
    query.id = qid
    sock.sendto(query.to_wire(), ("127.0.0.1", port))
    try:
        reply = dns.message.from_wire(sock.recv(4096))
    except socket.timeout:
        return None
    return reply.rcode(), tuple(rrset.to_text() for rrset in reply.answer)


def query_load(port: int, results: list, stop: threading.Event, limit: int = 20_000, seconds: float = 20.0) -> None:
    """Sequential queries, each waiting up to 1 s, bounded in count and time: (name, answer or None)."""
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        for i in range(limit):
            if stop.is_set() or time.monotonic() > deadline:
                return
            name = NAMES[i % len(NAMES)]
            results.append((name, ask(sock, port, name, i % 65536)))
            time.sleep(0.002)


def admin_reload(port: int) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/reload", data=b"{}", method="POST", headers={
        "Authorization": "Bearer test-admin-token", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize("how", ["sighup", pytest.param("admin-api", marks=pytest.mark.slow)])
def test_alias_bomb_reload_is_refused_while_the_old_config_answers_every_query(tmp_path, how):
    path = isolated_example(tmp_path)
    good = path.read_text()
    bomb_line = good.count("\n") + 6  # the alias that crosses the bound: e's first *d
    expected = (f"{path}:{bomb_line}:10: notes.e[0]: alias *d expands to 7,381 nodes: aliases would add "
                "15,642 nodes by here, more than the 10,000 allowed (the larger of 10,000 and 4 times the ")
    with harness.dnsd(path) as process:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2.0)
            before = {name: ask(sock, process.port, name, 1) for name in NAMES}
        assert before["contoso.azurecr.test"] and before["contoso.azurecr.test"][1], before
        rss_before = peak_rss_kib(process.pid)
        results: list = []
        stop = threading.Event()
        load = threading.Thread(target=query_load, args=(process.port, results, stop))
        load.start()
        try:
            harness.wait_until(lambda: len(results) >= 20, 10, "queries running before the reload")
            path.write_text(good + BOMB)
            started = time.monotonic()
            if how == "sighup":
                process.send_signal(signal.SIGHUP)
                assert process.wait_for_log('"config_reload_failed"', timeout=10), process.log_text()[-2000:]
                problems = json.loads(next(line for line in process.log_lines()
                                           if '"config_reload_failed"' in line))["problems"]
            else:
                status, body = admin_reload(process.admin_port)
                assert status == 422 and body["ok"] is False, body
                problems = body["problems"]
            refused_after = time.monotonic() - started
            answered = len(results)  # queries after the refusal too
            harness.wait_until(lambda: len(results) >= answered + 100, 10, "100 queries after the refusal")
        finally:
            stop.set()
            load.join(30)
        rss_after = peak_rss_kib(process.pid)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2.0)
            after = {name: ask(sock, process.port, name, 2) for name in NAMES}
        assert process.running()

    assert len(problems) == 1 and problems[0].startswith(expected), problems
    assert problems[0].endswith(" nodes written so far)"), problems
    assert refused_after < 1.0, f"refused after {refused_after:.2f} s"
    assert rss_after - rss_before < 20 * 1024, f"peak RSS grew by {(rss_after - rss_before) / 1024:.0f} MiB"
    assert len(results) >= 100, f"only {len(results)} queries ran"
    lost = [name for name, answer in results if answer is None]
    assert not lost, f"{len(lost)} of {len(results)} queries unanswered during the reload"
    wrong = [(name, answer) for name, answer in results if answer != before[name]]
    assert not wrong, f"{len(wrong)} answers differ from the old config's, first {wrong[0]}"
    assert after == before


@pytest.mark.slow
def test_attack_script_reports_every_bomb_refused():
    """bench/attacks/yaml_alias_bomb.py, bounded: its own dnsd on loopback, two reloads (SIGHUP, API)."""
    script = harness.REPO_ROOT / "bench" / "attacks" / "yaml_alias_bomb.py"
    done = subprocess.run([sys.executable, str(script), "--attempts", "2", "--rate", "200", "--timeout", "10",
                           "--json"], capture_output=True, text=True, timeout=120, cwd=harness.REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["bomb_nodes"] == 9 ** 7
    assert [(item["via"], item["refused"]) for item in result["attempts"]] == [("sighup", True), ("admin-api", True)]
    assert "alias *d expands to 7,381 nodes" in result["attempts"][1]["problem"]
    assert result["refusals_logged"] == 2 and result["queries"]["lost"] == 0 and result["queries"]["answered"] > 50
