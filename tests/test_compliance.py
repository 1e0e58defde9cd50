"""DNS compliance as ISC's genreport (the EDNS compliance tester) judges it, against a real dnsd.

genreport cannot be installed here (no Debian or PyPI package ships it and its source is not
reachable from CI), so this is a table of its tests: for each, the query it sends (flags, EDNS
version, size, flags and options, opcode, type, UDP or TCP) and the rules by which it calls a reply
"ok" (restated here from its documentation and behaviour, not its code). Every row must be ok.

Not covered: genreport's `icmp` test (a ping of the host, not a DNS matter). Its `dnswkk` test
(outside its default groups) signs a query with a well-known all-zero key and expects the server to
hold that key; we hold no TSIG keys, so the row here checks RFC 8945 section 5.2 instead: NOTAUTH,
TSIG error BADKEY, the TSIG RR echoed unsigned (empty MAC) and otherwise well-formed by genreport's
TSIG checks (last record, class ANY, TTL 0, same key and algorithm, time within the fudge).
"""
from __future__ import annotations

import random
import socket
import struct
import time
from dataclasses import dataclass

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import pytest

from tests import harness
from tests.dnstest import isolated_example

ZONE = "azurecr.test."
SOA, DNSKEY = 6, 48
NSID, ECS, EXPIRE, COOKIE, UNKNOWN = 3, 8, 9, 10, 100
CLIENT_COOKIE = bytes(range(1, 9))


def option(code: int, data: bytes = b"") -> bytes:
    return struct.pack("!HH", code, len(data)) + data


@dataclass(frozen=True)
class Probe:
    """One genreport test: the query it sends."""

    name: str
    qtype: int = SOA
    udpsize: int = 0  # 0: no EDNS
    version: int = 0
    eflags: int = 0  # EDNS flags (DO = 0x8000)
    options: bytes = b""
    tcp: bool = False
    cookie: bool = False  # a client cookie is sent: BADCOOKIE would be acceptable too
    ignore_tc: bool = False  # judge the truncated UDP reply itself, no TCP retry
    aa: bool = False
    tc: bool = False
    rd: bool = False
    ra: bool = False
    z: bool = False
    ad: bool = False
    cd: bool = False
    opcode: int = 0
    signed: bool = False  # TSIG with the well-known key (name ".", 32 zero bytes, hmac-sha256)


OPTLIST = option(NSID) + option(ECS, b"\x00\x01\x00\x00") + option(EXPIRE) + option(COOKIE, CLIENT_COOKIE)
EDNS = [  # genreport's default group
    Probe("dns"),
    Probe("edns", udpsize=4096),
    Probe("edns1", udpsize=4096, version=1),
    Probe("edns@512", qtype=DNSKEY, udpsize=512, eflags=0x8000, ignore_tc=True),
    Probe("ednsopt", udpsize=4096, options=option(UNKNOWN)),
    Probe("edns1opt", udpsize=4096, version=1, options=option(UNKNOWN)),
    Probe("do", udpsize=4096, eflags=0x8000),
    Probe("ednsflags", udpsize=4096, eflags=0x0080),
    Probe("optlist", udpsize=4096, options=OPTLIST, cookie=True),
    Probe("ednstcp", qtype=DNSKEY, udpsize=512, eflags=0x8000, tcp=True),
]
FULL = [
    Probe("aa", aa=True), Probe("ad", ad=True), Probe("cd", cd=True), Probe("ra", ra=True),
    Probe("rd", rd=True), Probe("tc", tc=True), Probe("zflag", z=True),
    Probe("opcode", opcode=15, qtype=0),
    Probe("opcodeflg", opcode=15, qtype=0, tc=True, rd=True, ra=True, cd=True, ad=True, aa=True, z=True),
    Probe("type666", qtype=666), Probe("tcp", tcp=True),
    Probe("docd", udpsize=4096, eflags=0x8000, cd=True),
    Probe("edns1do", udpsize=4096, version=1, eflags=0x8000),
    Probe("ednsnsid", udpsize=4096, options=option(NSID)),
    Probe("ednscookie", udpsize=4096, options=option(COOKIE, CLIENT_COOKIE), cookie=True),
    Probe("ednsexpire", udpsize=4096, options=option(EXPIRE)),
    Probe("ednssubnet", udpsize=4096, options=option(ECS, b"\x00\x01\x00\x00")),
    Probe("edns1nsid", udpsize=4096, version=1, options=option(NSID)),
    Probe("edns1cookie", udpsize=4096, version=1, options=option(COOKIE, CLIENT_COOKIE), cookie=True),
    Probe("edns1expire", udpsize=4096, version=1, options=option(EXPIRE)),
    Probe("edns1subnet", udpsize=4096, version=1, options=option(ECS, b"\x00\x01\x00\x00")),
]
COMMON = [  # what named and dig of BIND 9.11 send
    Probe("bind11", udpsize=4096, eflags=0x8000, options=option(COOKIE, CLIENT_COOKIE), cookie=True),
    Probe("dig11", udpsize=4096, options=option(COOKIE, CLIENT_COOKIE), cookie=True, rd=True, ad=True),
]
TYPE_CODES = {"A": 1, "NS": 2, "MD": 3, "MF": 4, "CNAME": 5, "SOA": 6, "MB": 7, "MG": 8, "MR": 9, "NULL": 10,
              "WKS": 11, "PTR": 12, "HINFO": 13, "MINFO": 14, "MX": 15, "TXT": 16, "RP": 17, "AFSDB": 18,
              "X25": 19, "ISDN": 20, "RT": 21, "NSAP": 22, "NSAP-PTR": 23, "SIG": 24, "KEY": 25, "PX": 26,
              "GPOS": 27, "AAAA": 28, "LOC": 29, "NXT": 30, "SRV": 33, "NAPTR": 35, "KX": 36, "CERT": 37,
              "A6": 38, "DNAME": 39, "APL": 42, "DS": 43, "SSHFP": 44, "IPSECKEY": 45, "RRSIG": 46, "NSEC": 47,
              "DNSKEY": 48, "DHCID": 49, "NSEC3": 50, "NSEC3PARAM": 51, "TLSA": 52, "SMIMEA": 53, "HIP": 55,
              "CDS": 59, "CDNSKEY": 60, "OPENPGPKEY": 61, "SPF": 99, "NID": 104, "L32": 105, "L64": 106,
              "LP": 107, "EUI48": 108, "EUI64": 109, "URI": 256, "CAA": 257, "AVC": 258, "DOA": 259,
              "DLV": 32769, "TYPE1000": 1000}
TYPES = [Probe(name, qtype=code) for name, code in TYPE_CODES.items()]
SIGNED = [Probe("dnswkk", signed=True)]
PROBES = EDNS + FULL + COMMON + TYPES + SIGNED


def query_wire(probe: Probe, qid: int) -> bytes:
    if probe.signed:
        message = dns.message.make_query(ZONE, probe.qtype, id=qid, use_edns=False)
        message.flags = 0
        message.use_tsig({dns.name.root: dns.tsig.Key(dns.name.root, b"\0" * 32, dns.tsig.HMAC_SHA256)},
                         keyname=dns.name.root)
        return message.to_wire()
    flags = (probe.opcode << 11) | (0x0400 * probe.aa) | (0x0200 * probe.tc) | (0x0100 * probe.rd) \
        | (0x0080 * probe.ra) | (0x0040 * probe.z) | (0x0020 * probe.ad) | (0x0010 * probe.cd)
    question = b""
    if probe.opcode == 0:  # genreport sends the unknown opcode with an empty question section
        question = dns.name.from_text(ZONE).to_wire() + struct.pack("!HH", probe.qtype, 1)
    opt = b""
    if probe.udpsize:
        opt = b"\x00" + struct.pack("!HHBBHH", 41, probe.udpsize, 0, probe.version, probe.eflags,
                                    len(probe.options)) + probe.options
    return struct.pack("!6H", qid, flags, 1 if question else 0, 0, 0, 1 if opt else 0) + question + opt


def exchange(port: int, wire: bytes, tcp: bool) -> bytes:
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = sock.recv(65535)
                assert chunk, "connection closed before the reply"
                data += chunk
            return data[2:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(wire, ("127.0.0.1", port))
        return sock.recv(65535)


def judge(probe: Probe, reply: bytes, qid: int) -> list[str]:
    """genreport's verdict as tags; an empty list is its 'ok'."""
    tags = []
    flags = struct.unpack_from("!H", reply, 2)[0]
    message = dns.message.from_wire(reply, keyring=False)  # TSIG read, not verified (see the dnswkk row)
    opt = message.opt
    rcode = (flags & 0xF) | (((opt.ttl >> 24) & 0xFF) << 4 if opt is not None else 0)
    opcode = (flags >> 11) & 0xF
    if message.id != qid:
        tags.append("id")
    if opcode != probe.opcode:
        tags.append(f"opcode{opcode}")
    if probe.signed:
        expected = dns.rcode.NOTAUTH
    elif probe.version:
        expected = dns.rcode.BADVERS
    else:
        expected = dns.rcode.NOTIMP if probe.opcode else dns.rcode.NOERROR
    if rcode != expected and not (probe.cookie and probe.version == 0 and rcode == 23):  # 23: BADCOOKIE
        tags.append(dns.rcode.to_text(rcode).lower())
    if opt is not None:
        version = (opt.ttl >> 16) & 0xFF
        if version != 0:
            tags.append("version-not-zero")
        if (version < probe.version) != (rcode == dns.rcode.BADVERS):
            tags.append("badversion")
        if opt.ttl & 0x7FFF:
            tags.append("mbz")  # only DO is defined
        if any(o.otype == UNKNOWN for o in message.options):
            tags.append("echoed")
        if probe.cookie and any(o.otype == COOKIE and o.client != CLIENT_COOKIE for o in message.options):
            tags.append("cookie-mismatch")
    if opt is None and probe.udpsize:
        tags.append("noopt")
    if opt is not None and not probe.udpsize:
        tags.append("opt")
    soa_in_answer = any(r.rdtype == SOA and r.name == dns.name.from_text(ZONE) for r in message.answer)
    if probe.qtype == SOA and probe.opcode == 0 and not probe.signed:
        if probe.version == 0 and not probe.ignore_tc and rcode == 0 and not soa_in_answer:
            tags.append("nosoa")
        if soa_in_answer and (probe.version or rcode != 0):
            tags.append("soa")
    aa, ra, rd, ad, cd, z = (bool(flags & bit) for bit in (0x0400, 0x0080, 0x0100, 0x0020, 0x0010, 0x0040))
    if not aa and probe.version == 0 and rcode == 0 and probe.opcode == 0:
        tags.append("noaa")
    if aa and probe.opcode:
        tags.append("aa")
    if ra and probe.opcode:
        tags.append("ra")
    if rd and (probe.opcode or not probe.rd):
        tags.append("rd")
    if not rd and probe.rd and probe.opcode == 0:
        tags.append("nord")
    if ad and (probe.opcode or (not probe.ad and not probe.eflags & 0x8000)):
        tags.append("ad")
    if cd and (probe.opcode or not probe.cd):
        tags.append("cd")
    if z:
        tags.append("z")
    if probe.ignore_tc and len(reply) > (probe.udpsize or 512):
        tags.append("toobig")
    if probe.opcode:
        counts = struct.unpack_from("!4H", reply, 4)
        for section, count in zip(("question", "answer", "authority", "additional"), counts):
            if count:
                tags.append(f"non-empty-{section}-section")
    if probe.signed:
        tags += tsig_tags(message, qid)
    elif message.had_tsig:
        tags.append("tsig")
    return tags


def tsig_tags(message: dns.message.Message, qid: int) -> list[str]:
    """The unsigned BADKEY reply of RFC 8945 5.2/5.3.2, with genreport's well-formedness checks."""
    if not message.had_tsig:
        return ["notsig"]
    tags = []
    tsig = message.tsig[0]
    if message.tsig.rdclass != dns.rdataclass.ANY:
        tags.append("tsig-bad-class")
    if message.tsig.ttl != 0:
        tags.append("tsig-bad-ttl")
    if message.keyname != dns.name.root:
        tags.append("tsig-wrong-key")
    if tsig.algorithm != dns.tsig.HMAC_SHA256:
        tags.append("tsig-wrong-alg")
    if tsig.fudge == 0:
        tags.append("tsig-bad-fudge")
    elif abs(tsig.time_signed - time.time()) > tsig.fudge:
        tags.append("tsig-bad-time")
    if tsig.error != dns.rcode.BADKEY:
        tags.append(f"tsig-error-{tsig.error}")
    if tsig.mac != b"":
        tags.append("tsig-signed-error")  # an error about the key must not be signed
    if tsig.original_id != qid:
        tags.append("tsig-original-id")
    return tags  # (dnspython itself refuses a TSIG that is not the last record)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with harness.dnsd(isolated_example(tmp_path_factory.mktemp("compliance"))) as process:
        yield process


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_genreport_test_is_ok(server, probe):
    qid = random.randrange(65536)
    reply = exchange(server.port, query_wire(probe, qid), probe.tcp)
    if reply[2] & 0x02 and not probe.tcp and not probe.ignore_tc:  # truncated: genreport retries over TCP
        reply = exchange(server.port, query_wire(probe, qid), True)
    assert judge(probe, reply, qid) == []


@pytest.mark.parametrize("wrong,tag", [
    (lambda r: r[:3] + bytes([r[3] | 0x10]) + r[4:], "cd"),    # CD echoed on NOTIMP (the old reply)
    (lambda r: r[:2] + bytes([r[2] | 0x01]) + r[3:], "rd"),    # RD echoed on NOTIMP
    (lambda r: r[:2] + bytes([r[2] | 0x04]) + r[3:], "aa"),
    (lambda r: r[:3] + bytes([(r[3] & 0xF0) | 0]) + r[4:], "noerror"),
])
def test_the_judge_flags_a_wrong_notimp(server, wrong, tag):
    """The table can fail: a NOTIMP reply to opcode 15 with a flag genreport objects to is not ok."""
    probe = next(p for p in FULL if p.name == "opcodeflg")
    qid = 4242
    reply = exchange(server.port, query_wire(probe, qid), False)
    assert judge(probe, reply, qid) == []
    assert tag in judge(probe, wrong(reply), qid)


def test_the_judge_flags_an_unsigned_answer_to_a_signed_query(server):
    probe = SIGNED[0]
    plain = exchange(server.port, query_wire(Probe("dns"), 77), False)  # an answer with no TSIG
    assert "notsig" in judge(probe, plain, 77)


DIG = [
    ("signed with a key we do not have", ["-y", "hmac-sha256:mykey:c2VjcmV0c2VjcmV0c2VjcmV0", "azurecr.test", "SOA"],
     ["status: NOTAUTH", "TSIG\thmac-sha256.", " BADKEY ", "Couldn't verify signature"], []),
    ("unknown opcode with every flag", ["+noedns", "+header-only", "+opcode=15", "+cd", "+rec", "+adflag",
                                        "+aaflag", "+zflag"],
     ["opcode: RESERVED15, status: NOTIMP", ";; flags: qr;"], [" rd", " cd", " ad", " aa"]),
]


@pytest.mark.parametrize("args,present,absent", [c[1:] for c in DIG], ids=[c[0] for c in DIG])
def test_dig_sees_the_same(server, args, present, absent):
    from tests.test_integration import dig
    output = dig(server, *args)
    flags_line = next(line for line in output.splitlines() if line.startswith(";; flags:"))
    for text in present:
        assert text in output
    for text in absent:
        assert text not in flags_line.split(";")[1]
