"""The real dnsd process on loopback, queried over UDP and TCP with dig and dnspython, as users do."""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys

import dns.message
import dns.query
import dns.rcode
import pytest

from tests import harness
from tests.dnstest import EXAMPLE, ROOT, isolated_example, make_query
from tests.tools import require_tool



def need(tool: str) -> str:
    return require_tool(tool, "to query the real server as users do", package={"dig": "dnsutils"}.get(tool))


@pytest.fixture(scope="module")
def example_config(tmp_path_factory):
    return isolated_example(tmp_path_factory.mktemp("integration"))


@pytest.fixture(scope="module")
def server(example_config):
    with harness.dnsd(example_config) as process:
        yield process


def dig(server, *args: str) -> str:
    result = subprocess.run([need("dig"), "@127.0.0.1", "-p", str(server.port), "+norec", "+time=2", "+tries=1",
                             *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def answer_lines(dig_output: str) -> list[str]:
    """dig's ANSWER SECTION as folded zone-file lines."""
    lines, inside = [], False
    for line in dig_output.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            inside = True
        elif inside and (not line.strip() or line.startswith(";;")):
            inside = False
        elif inside:
            lines.append(" ".join(line.split()))
    return lines


CHAIN = ["contoso.azurecr.test. 300 IN CNAME contoso.privatelink.azurecr.test.",
         "contoso.privatelink.azurecr.test. 300 IN CNAME contoso.tm.azurecr.test."]

DIG_CASES = [
    ("public chain over UDP", ["contoso.azurecr.test"], CHAIN + [
        "contoso.tm.azurecr.test. 30 IN CNAME contoso.eastus.reg.azurecr.test.",
        "contoso.eastus.reg.azurecr.test. 10 IN A 127.0.0.11"]),
    ("public chain over TCP", ["+tcp", "contoso.azurecr.test"], CHAIN + [
        "contoso.tm.azurecr.test. 30 IN CNAME contoso.eastus.reg.azurecr.test.",
        "contoso.eastus.reg.azurecr.test. 10 IN A 127.0.0.11"]),
    ("VNet source address", ["-b", "127.0.0.70", "contoso.azurecr.test"], [
        CHAIN[0], "contoso.privatelink.azurecr.test. 10 IN A 10.1.0.4"]),
    ("ECS client in southeastasia", ["+subnet=203.0.113.0/24", "contoso.azurecr.test"], CHAIN + [
        "contoso.tm.azurecr.test. 30 IN CNAME contoso.southeastasia.reg.azurecr.test.",
        "contoso.southeastasia.reg.azurecr.test. 10 IN A 127.0.0.13"]),
    ("regional name", ["contoso.westeurope.geo.azurecr.test"], [
        "contoso.westeurope.geo.azurecr.test. 300 IN CNAME contoso.westeurope.reg.azurecr.test.",
        "contoso.westeurope.reg.azurecr.test. 10 IN A 127.0.0.12"]),
    ("data name over TCP from the VNet", ["+tcp", "-b", "127.0.0.70", "contoso.eastus.data.azurecr.test"], [
        "contoso.eastus.data.azurecr.test. 300 IN CNAME contoso.eastus.data.privatelink.azurecr.test.",
        "contoso.eastus.data.privatelink.azurecr.test. 10 IN A 10.1.0.5"]),
]


@pytest.mark.parametrize("args,expected", [(a, e) for _, a, e in DIG_CASES], ids=[c[0] for c in DIG_CASES])
def test_dig(server, args, expected):
    output = dig(server, *args)
    assert "status: NOERROR" in output and " aa" in output.split("flags:")[1].split(";")[0]
    assert answer_lines(output) == expected


def test_dig_nxdomain_and_refused(server):
    assert "status: NXDOMAIN" in dig(server, "nothing.azurecr.test")
    assert "status: REFUSED" in dig(server, "example.com")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dnspython_over_udp_and_tcp(server, transport):
    query = make_query("contoso.azurecr.test", "A", ecs="198.51.100.0/24")
    send = dns.query.udp if transport == "udp" else dns.query.tcp
    reply = send(query, "127.0.0.1", port=server.port, timeout=2)
    assert reply.answer[-1].to_text() == "contoso.westeurope.reg.azurecr.test. 10 IN A 127.0.0.12"


def test_pipelined_tcp_queries_all_answered_in_one_connection(server):
    names = ["contoso.azurecr.test", "contoso.eastus.geo.azurecr.test", "nothing.azurecr.test", "azurecr.test"]
    queries = [make_query(name, "A", qid=100 + i) for i, name in enumerate(names)]
    blob = b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries))
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        sock.sendall(blob)
        replies = []
        buffer = b""
        while len(replies) < len(queries):
            chunk = sock.recv(65535)
            assert chunk, "connection closed early"
            buffer += chunk
            while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack("!H", buffer[:2])[0]:
                size = struct.unpack("!H", buffer[:2])[0]
                replies.append(dns.message.from_wire(buffer[2:2 + size]))
                buffer = buffer[2 + size:]
    assert sorted(r.id for r in replies) == [100, 101, 102, 103]
    assert {r.id: dns.rcode.to_text(r.rcode()) for r in replies}[102] == "NXDOMAIN"


def test_garbage_does_not_stop_the_server(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for junk in (b"", b"\x00", os.urandom(11), b"\xff" * 600, os.urandom(300)):
            sock.sendto(junk, ("127.0.0.1", server.port))
        query = make_query("contoso.azurecr.test", "A")
        sock.sendto(query.to_wire(), ("127.0.0.1", server.port))
        for _ in range(10):  # skip any FORMERR replies to the junk
            data = sock.recv(4096)
            if data[:2] == query.to_wire()[:2]:
                break
        reply = dns.message.from_wire(data)
    assert len(reply.answer) == 4
    assert server.running()


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnsd", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_check_config_lists_every_problem_with_its_line():
    path = ROOT / "tests" / "config" / "bad" / "bad-values.yaml"
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith(f"  {path}:")]
    assert len(problems) == 8


def test_serve_refuses_a_broken_config_with_every_problem():
    path = ROOT / "tests" / "config" / "bad" / "view-unknown-registry.yaml"
    result = run_cli("serve", "--config", str(path), "--listen", f"127.0.0.1:{harness.free_port()}")
    assert result.returncode == 2
    assert "4 problems in config" in result.stderr


def test_serve_reports_an_address_in_use(example_config):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_cli("serve", "--config", str(example_config), "--listen", f"127.0.0.1:{port}",
                         "--admin-listen", "off")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_explain_prints_chain_and_why():
    result = run_cli("explain", "contoso.azurecr.test", "--config", str(EXAMPLE), "--client", "198.51.100.7")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "view: public" in out and "client region: westeurope (client network 198.51.100.0/24)" in out
    assert "westeurope" in out.split("<- chosen")[0].splitlines()[-1]
    assert "contoso.tm.azurecr.test. 30 IN CNAME contoso.westeurope.reg.azurecr.test." in out


def test_sigterm_stops_cleanly(example_config):
    with harness.dnsd(example_config) as process:
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
        assert "dnsd_stopping" in process.log_text()
