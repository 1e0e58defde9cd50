"""Missing names of every wire length under every parent get NXDOMAIN (or NODATA), never SERVFAIL:
a real dnsd process over UDP and TCP, one query per (parent, length, label shape, qtype class)."""
from __future__ import annotations

import socket
import struct

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from tests import harness
from tests.dnstest import isolated_example

ZONE = "azurecr.test"
PARENTS = ["", "geo.", "data.", "privatelink.", "tm.", "reg."]  # the apex and each generated subtree
# one qtype of each class the tables treat differently: address types, a type held only at some
# names, a type held at the apex, alias, RFC 8482 ANY, DNSSEC types no name holds, unknown types
QTYPES = ["A", "AAAA", "TXT", "MX", "SOA", "CNAME", "ANY", "DS", "TYPE666", "TYPE65280"]


def labels_for(filler: int, longest: int) -> list[str]:
    """Labels of at most `longest` bytes whose wire form (length byte + text each) is `filler` bytes."""
    labels = []
    while filler > 0:
        size = min(longest, filler - 1)
        if filler - size - 1 == 1:
            size -= 1
        labels.append("q" * size)
        filler -= size + 1
    return labels


def missing_names():
    """(parent, wire length, name) for every length from the shortest name below the parent to 255,
    in two shapes: the longest labels (63 bytes, like the negative-answer filler) and 1-2 byte labels."""
    for parent in PARENTS:
        base = parent + ZONE
        base_wire = len(base) + 2
        for length in range(base_wire + 2, 256):
            for longest in (63, 2):
                name = ".".join(labels_for(length - base_wire, longest) + [base])
                assert len(dns.name.from_text(name).to_wire()) == length
                yield parent, length, name


def query_wire(name: str, qtype: str, qid: int) -> bytes:
    """Built by hand: dnspython's message objects would cost more than the server's answer."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return struct.pack("!6H", qid, 0, 1, 0, 0, 0) + qname + struct.pack("!2H", dns.rdatatype.from_text(qtype), 1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with harness.dnsd(isolated_example(tmp_path_factory.mktemp("negative"))) as process:
        yield process


def check(reply_wire: bytes, query: bytes, full: bool = True) -> str | None:
    """None when the reply is a proper negative answer, else what is wrong. The header and question
    are always checked; with `full` the whole reply is parsed too (the SOA must be the zone's)."""
    flags, _, ancount, nscount = struct.unpack_from("!4H", reply_wire, 2)
    if flags & 0xF not in (0, 3) or ancount or nscount != 1:
        return f"{dns.rcode.to_text(flags & 0xF)} with {ancount} answers, {nscount} authority records"
    if reply_wire[12:len(query)] != query[12:]:
        return "question not echoed"
    if not full:
        return None
    reply = dns.message.from_wire(reply_wire)
    rcode = dns.rcode.to_text(reply.rcode())
    if rcode not in ("NXDOMAIN", "NOERROR") or reply.answer:
        return f"{rcode} with {len(reply.answer)} answers"
    soa = [rrset for rrset in reply.authority if rrset.rdtype == dns.rdatatype.SOA]
    if not soa or soa[0].name.to_text() != ZONE + ".":
        return f"{rcode} without the zone's SOA"
    return None


@pytest.mark.slow
def test_every_length_under_every_parent_over_udp(server):
    problems = []
    count = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for parent, length, name in missing_names():
            for qtype in QTYPES:
                qid = count % 65536
                query = query_wire(name, qtype, qid)
                sock.sendto(query, ("127.0.0.1", server.port))
                reply = sock.recv(4096)
                assert reply[:2] == query[:2]
                problem = check(reply, query, full=qtype == "A")
                if problem:
                    problems.append((parent or "apex", length, qtype, problem))
                count += 1
    assert count > 25_000  # (6 parents x ~230 lengths x 2 shapes x 10 qtypes)
    assert problems == []
    assert "query_failed" not in server.log_text()


@pytest.mark.parametrize("qtype", ["A", pytest.param("TXT", marks=pytest.mark.slow),
                                   pytest.param("TYPE666", marks=pytest.mark.slow)])
def test_every_length_under_the_apex_over_tcp(server, qtype):
    problems = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        for parent, length, name in missing_names():
            if parent:
                continue
            wire = query_wire(name, qtype, length)
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            size = struct.unpack("!H", _read(sock, 2))[0]
            problem = check(_read(sock, size), wire)
            if problem:
                problems.append((length, problem))
    assert problems == []


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data
