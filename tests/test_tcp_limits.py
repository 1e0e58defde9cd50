"""DNS over TCP against a real dnsd on loopback while clients hog it: a source at its per-source cap
does not keep other clients out (plain TCP, UDP truncated then TCP, dig), and TCP clients up to and
past an open-files limit never take the descriptors the health feed and admin API need, so routing
keeps avoiding a degraded replica. Sources differ by their 127.x.y.z address."""
from __future__ import annotations

import json
import re
import resource
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from dnsd.protocol.fdlimit import TcpBudget, tcp_connection_budget
from tests import harness
from tests.dnstest import isolated_example
from tests.tools import require_tool

TOKEN = "test-admin-token"  # what isolated_example writes
EASTUS, WESTEUROPE = "127.0.0.11", "127.0.0.12"  # the example's replica addresses
GLOBAL_NAME = "contoso.azurecr.test"


def write_config(tmp_path: Path, server: dict, health: dict | None = None) -> Path:
    path = isolated_example(tmp_path, **({"health": health} if health else {}))
    data = yaml.safe_load(path.read_text())
    data["server"] = {**data.get("server", {}), **server}
    # about 3 KB of TXT: truncated over UDP, whole over TCP
    data["zone"]["records"].append({"name": "big", "type": "TXT", "ttl": 60,
                                    "values": [f"token-{i:02d}-" + "x" * 90 for i in range(30)]})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def query_bytes(qid: int, name: str = GLOBAL_NAME) -> bytes:
    query = dns.message.make_query(name, "A")
    query.id = qid
    wire = query.to_wire()
    return struct.pack("!H", len(wire)) + wire


def tcp_connect(source: str, port: int, timeout: float = 1.0) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    except OSError:
        return None


def tcp_ask(sock: socket.socket | None, qid: int) -> bool:
    """One query on an open connection: True when its answer comes back, False when the server
    closed the connection (or nothing came within the socket's timeout)."""
    if sock is None:
        return False
    try:
        sock.sendall(query_bytes(qid))
        header = b""
        while len(header) < 2:
            chunk = sock.recv(2 - len(header))
            if not chunk:
                return False
            header += chunk
        (length,) = struct.unpack("!H", header)
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                return False
            body += chunk
    except OSError:
        return False
    return dns.message.from_wire(body).id == qid


def global_address(port: int) -> str | None:
    try:
        reply = dns.query.udp(dns.message.make_query(GLOBAL_NAME, "A"), "127.0.0.1", port=port, timeout=1)
    except Exception:
        return None
    return reply.answer[-1][0].address if reply.answer else None


def metric(admin_port: int, name: str) -> float:
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})  # TCP figures are not public
    with urllib.request.urlopen(request, timeout=2) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def events(log_text: str, name: str) -> list[dict]:
    """The JSON log lines of one event."""
    found = []
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == name:
            found.append(entry)
    return found


def wait_for(predicate, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"condition not reached within {limit:g}s")


# --- one source at its per-source limit -----------------------------------------------------------


def ask_plain_tcp(port: int) -> float:
    query = dns.message.make_query(GLOBAL_NAME, "A")
    started = time.monotonic()
    reply = dns.query.tcp(query, "127.0.0.1", port=port, source="127.0.0.3", timeout=1)
    elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    return elapsed


def ask_udp_then_tcp(port: int) -> float:
    query = dns.message.make_query("big.azurecr.test", "TXT", use_edns=False)
    started = time.monotonic()
    reply, used_tcp = dns.query.udp_with_fallback(query, "127.0.0.1", port=port, source="127.0.0.3", timeout=1)
    elapsed = time.monotonic() - started
    assert used_tcp, "the answer should have been truncated over UDP"
    assert not reply.flags & dns.flags.TC and len(reply.answer[0]) == 30
    return elapsed


def ask_dig(port: int) -> float:
    dig = require_tool("dig", "to ask over TCP as a real client does", package="dnsutils")
    out = subprocess.run([dig, "@127.0.0.1", "-p", str(port), "-b", "127.0.0.3", "+tcp", "+tries=1",
                          "+time=1", GLOBAL_NAME, "A"], capture_output=True, text=True, timeout=10).stdout
    assert "status: NOERROR" in out and "ANSWER SECTION" in out, out
    return int(re.search(r";; Query time: (\d+) msec", out).group(1)) / 1000  # dig's own timing


#   how the other client asks   (each must be answered within 100 ms)
NEWCOMERS = [
    ("tcp", ask_plain_tcp),
    ("udp-truncated-then-tcp", ask_udp_then_tcp),  # what a resolver does for a large answer
    ("dig-tcp", ask_dig),
]


@pytest.mark.parametrize("ask", [  # plain TCP in the fast suite, the other clients slow
    pytest.param(a, id=n, marks=() if n == "tcp" else pytest.mark.slow) for n, a in NEWCOMERS])
def test_a_source_at_its_limit_does_not_keep_others_out(tmp_path, ask):
    path = write_config(tmp_path, {"tcp_max_connections": 64, "tcp_max_connections_per_source": 8})
    with harness.dnsd(path) as dnsd:
        # the hog tries to take every slot the server has, and keeps querying on what it got
        hog = [tcp_connect("127.0.0.2", dnsd.port) for _ in range(64)]
        try:
            answered = [tcp_ask(sock, i) for i, sock in enumerate(hog)]
            assert answered.count(True) == 8, f"the hog holds {answered.count(True)} connections"
            kept = [sock for sock, ok in zip(hog, answered) if ok]
            assert all(tcp_ask(sock, 100 + i) for i, sock in enumerate(kept))
            timings = [ask(dnsd.port) for _ in range(3)]
            assert max(timings) < 0.1, f"answered in {timings}"
            assert all(tcp_ask(sock, 200 + i) for i, sock in enumerate(kept))  # the hog keeps its 8
        finally:
            for sock in hog:
                if sock is not None:
                    sock.close()
        assert metric(dnsd.admin_port, 'geotm_tcp_connections_refused_total{reason="per_source_limit"}') == 56
        assert metric(dnsd.admin_port, "geotm_tcp_connections_evicted_total") == 0
        [refused, *_] = events(dnsd.log_text(), "tcp_connection_refused")
        assert (refused["reason"], refused["source"]) == ("per-source limit", "127.0.0.2/32")


# --- file descriptors: TCP clients past the open-files limit ---------------------------------------


def open_files_limit(soft: int, hard: int):
    def apply() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return apply


def admin_answers(admin_port: int) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}/v1/status",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return response.status == 200 and "registries" in json.load(response)
    except (OSError, ValueError):
        return False


POLL, TTL = 0.2, 2.0

#   dnsd's hard open-files limit   TCP clients opened (10 per source)
FD_CASES = [
    (256, 400),
    (512, 700),
]


@pytest.mark.slow
@pytest.mark.parametrize("hard, clients", FD_CASES, ids=[f"nofile-{h}-clients-{c}" for h, c in FD_CASES])
def test_tcp_clients_past_the_open_files_limit_never_change_routing(tmp_path, hard, clients):
    with harness.FakeFeed("contoso", ["eastus", "westeurope", "southeastasia"], degraded="eastus") as feed:
        path = write_config(tmp_path, {}, health={"feeds": [feed.url], "poll_interval": f"{POLL}s",
                                                  "ttl": f"{TTL}s", "state_file": str(tmp_path / "health.json")})
        with harness.dnsd(path, preexec_fn=open_files_limit(64, hard)) as dnsd:
            wait_for(lambda: global_address(dnsd.port) == WESTEUROPE, 5)  # eastus degraded: avoided
            [start] = events(dnsd.log_text(), "open_files_limit")
            assert (start["soft_before"], start["soft"], start["hard"]) == (64, hard, hard)
            [reduced] = events(dnsd.log_text(), "tcp_max_connections_reduced")
            limit = metric(dnsd.admin_port, "geotm_tcp_connection_limit")
            assert limit == start["tcp_max_connections"] == reduced["using"] <= hard - 128

            polls_before, started = feed.polls, time.monotonic()
            held: list[socket.socket] = []
            index, routed, admin_ok = 0, [], []
            try:
                # open `clients` connections, each sending a query and then holding on, then keep the
                # pressure for twice the health TTL: an expiry would show within that
                while index < clients or time.monotonic() - started < 2 * TTL + 1:
                    for _ in range(20 if index < clients else 0):
                        source = f"127.0.{2 + index // 2500}.{1 + (index // 10) % 250}"
                        sock = tcp_connect(source, dnsd.port, timeout=0.5)
                        if sock is not None:
                            try:
                                sock.sendall(query_bytes(index & 0xFFFF))
                            except OSError:
                                pass
                            held.append(sock)
                        index += 1
                    routed.append(global_address(dnsd.port))
                    admin_ok.append(admin_answers(dnsd.admin_port))
                    time.sleep(0.05)
                elapsed = time.monotonic() - started
                assert set(routed) == {WESTEUROPE}, f"the global name answered {sorted(set(map(str, routed)))}"
                assert all(admin_ok), f"the admin API failed {admin_ok.count(False)} of {len(admin_ok)} times"
                assert feed.polls - polls_before >= elapsed / POLL / 2, \
                    f"{feed.polls - polls_before} polls in {elapsed:.1f}s"
                shed = metric(dnsd.admin_port, "geotm_tcp_connections_evicted_total") + \
                    metric(dnsd.admin_port, "geotm_tcp_connections_closed_under_load_total")
                assert shed > 0, "the clients never reached the TCP limit"
            finally:
                for sock in held:
                    sock.close()
            log = dnsd.log_text()
            for event in ("health_expired", "health_feed_error", "tcp_accept_failed", "health_state_not_saved"):
                assert event not in log, f"{event} in the log:\n{log[-3000:]}"


#   configured  soft limit  open now  reserve  ->  limit  reduced  reserve kept
BUDGET_CASES = [
    (1024, 20000, 30, 128, TcpBudget(1024, False, True)),  # plenty: as configured
    (1024, 1024, 30, 128, TcpBudget(866, True, True)),  # the common default soft limit
    (1024, 256, 20, 128, TcpBudget(108, True, True)),
    (100, 256, 20, 128, TcpBudget(100, False, True)),  # configured below what fits
    (1024, 140, 20, 128, TcpBudget(60, True, False)),  # the reserve does not fit: half of what is free
    (1024, 20, 20, 128, TcpBudget(1, True, False)),  # nothing free: still one connection
    (1024, None, None, 128, TcpBudget(1024, False, True)),  # limit unknown: as configured
]


@pytest.mark.parametrize("configured, soft, in_use, reserve, expected", BUDGET_CASES)
def test_tcp_connection_budget(configured, soft, in_use, reserve, expected):
    assert tcp_connection_budget(configured, soft, in_use, reserve) == expected


#   change to the server section             reported as needing a restart
RESTART_CASES = [
    ({"tcp_max_connections_per_source": 4}, ["server.tcp_max_connections_per_source"]),
    ({"tcp_idle_timeout_under_load": "2s", "fd_reserve": 64}, ["server.tcp_idle_timeout_under_load/fd_reserve"]),
    ({"tcp_source_prefix_v6": 64}, ["server.tcp_source_prefix_v6"]),
    ({"edns_udp_size": 1400}, []),  # not a listener setting
]


@pytest.mark.parametrize("change, expected", RESTART_CASES, ids=[",".join(c) for c, _ in RESTART_CASES])
async def test_reload_says_tcp_limits_need_a_restart(tmp_path, change, expected):
    from dnsd.config import load_config
    from dnsd.serving.service import Dnsd
    path = write_config(tmp_path, {})
    dnsd = Dnsd(load_config(path))
    write_config(tmp_path, change)
    result = await dnsd.reload(str(path))
    assert result.ok, result.problems
    assert list(result.needs_restart) == expected
