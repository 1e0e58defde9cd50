"""dnsd.protocol.wire and dnsd.answers.encode against dnspython, an independent DNS implementation:
queries it builds must parse to the right fields, replies we build must decode in it to the records we
meant, and no input, however broken, may make the parser raise anything but WireError."""
from __future__ import annotations

import ipaddress
import struct
import time

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsd.protocol import wire
from dnsd.answers.answer import BADVERS, FORMERR, NOERROR, NOTIMP, NXDOMAIN, REFUSED, SERVFAIL, Answer
from dnsd.records import CNAME, RR, TXT, A, AddressRdata, NameRdata, type_number
from dnsd.config.rdatatext import rdata_from_text
from dnsd.answers.encode import PackedAnswer, encode_answer
from dnsd.protocol.wire import (
    EDNS_UDP_SIZE,
    ClientSubnet,
    Query,
    WireError,
    build_response,
    error_response,
    parse_query,
    udp_limit,
)

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def dq(name="contoso.azurecr.test", rdtype="A", *, qid=0x1234, **kw) -> bytes:
    """A query built by dnspython, as wire."""
    return dns.message.make_query(name, rdtype, id=qid, **kw).to_wire()


def header(qid=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def qname_wire(name: str) -> bytes:
    return b"".join(bytes([len(lab)]) + lab.encode() for lab in name.split(".") if lab) + b"\x00"


QUESTION = qname_wire("www.example.test") + b"\x00\x01\x00\x01"


def opt_rr(options: bytes = b"", udp=1232, ttl=0, owner=b"\x00") -> bytes:
    return owner + struct.pack("!HHIH", 41, udp, ttl, len(options)) + options


def ecs_opt(family: int, source: int, scope: int, address: bytes) -> bytes:
    return struct.pack("!HHHBB", 8, 4 + len(address), family, source, scope) + address


def edns_query(options: bytes = b"", **kw) -> bytes:
    return header(ar=1) + QUESTION + opt_rr(options, **kw)


def decode(reply: bytes) -> dns.message.Message:
    """dnspython's reading of a reply. dnspython reads UPDATE messages with UPDATE rules (zone
    section must be SOA); for those the structure is checked with the opcode cleared."""
    flags = struct.unpack_from("!H", reply, 2)[0]
    if (flags >> 11) & 0xF == dns.opcode.UPDATE:
        reply = reply[:2] + struct.pack("!H", flags & ~0x7800) + reply[4:]
    return dns.message.from_wire(reply)


def rrs(section) -> set[tuple]:
    """dnspython section -> set of (name, ttl, type, rdata); names compare case-insensitively."""
    out = set()
    for rrset in section:
        for rd in rrset:
            out.add((rrset.name, rrset.ttl, rrset.rdtype, rd))
    return out


def expected_rrs(lines: list[str], origin: str = "") -> set[tuple]:
    """Zone lines 'name ttl TYPE rdata' parsed by dnspython (the independent reading)."""
    out = set()
    for line in lines:
        name, ttl, rtype, text = line.split(None, 3)
        rd = dns.rdata.from_text("IN", rtype, text, origin=dns.name.from_text(origin or "."),
                                relativize=False)
        out.add((dns.name.from_text(name), int(ttl), dns.rdatatype.from_text(rtype), rd))
    return out


def rr(line: str, origin: str = "") -> RR:
    """'name ttl TYPE rdata' -> our RR, rdata read by rdata_from_text."""
    name, ttl, rtype, text = line.split(None, 3)
    return RR(name, type_number(rtype), int(ttl), rdata_from_text(type_number(rtype), text, origin))


def respond(query_wire: bytes, answer: Answer, *, udp: bool = True, ecs_scope=None) -> bytes:
    q = parse_query(query_wire)
    packed = encode_answer(answer, len(q.qname_key), q.qname())
    limit = udp_limit(q) if udp else None
    return build_response(q, packed, max_udp_size=limit, ecs_scope=ecs_scope)


# ----------------------------------------------------------------------------------------------
# parsing good queries
# ----------------------------------------------------------------------------------------------

V4_ECS = dns.edns.ECSOption("203.0.113.77", 24)
V6_ECS = dns.edns.ECSOption("2001:db8:abcd:12ff::1", 56)

PARSE_CASES = [
    pytest.param(dq(), dict(rd=True, cd=False, qtype=1, qclass=1, edns=None), id="plain-no-edns"),
    pytest.param(dq(use_edns=0, payload=4096),
                 dict(edns=wire.Edns(4096, 0, False, None)), id="edns-4096"),
    pytest.param(dq(use_edns=0, payload=300),
                 dict(edns=wire.Edns(512, 0, False, None)), id="edns-small-size-read-as-512"),
    pytest.param(dq(want_dnssec=True),
                 dict(edns=wire.Edns(1232, 0, True, None)), id="do-bit"),
    pytest.param(dq(use_edns=1, payload=1232),
                 dict(edns=wire.Edns(1232, 1, False, None)), id="edns-version-1"),
    pytest.param(dq(use_edns=0, options=[V4_ECS]),
                 dict(edns=wire.Edns(1232, 0, False, ClientSubnet(
                     1, 24, ipaddress.IPv4Address("203.0.113.0")))), id="ecs-v4-24"),
    pytest.param(dq(use_edns=0, options=[V6_ECS]),
                 dict(edns=wire.Edns(1232, 0, False, ClientSubnet(
                     2, 56, ipaddress.IPv6Address("2001:db8:abcd:1200::")))), id="ecs-v6-56"),
    pytest.param(dq(use_edns=0, options=[dns.edns.ECSOption("198.51.100.0", 0)]),
                 dict(edns=wire.Edns(1232, 0, False, ClientSubnet(
                     1, 0, ipaddress.IPv4Address("0.0.0.0")))), id="ecs-v4-prefix-0"),
    pytest.param(dq(use_edns=0, options=[dns.edns.ECSOption("203.0.113.77", 32)]),
                 dict(edns=wire.Edns(1232, 0, False, ClientSubnet(
                     1, 32, ipaddress.IPv4Address("203.0.113.77")))), id="ecs-v4-32"),
    pytest.param(edns_query(ecs_opt(0, 0, 0, b"")),
                 dict(edns=wire.Edns(1232, 0, False, None)), id="ecs-family-0-means-none"),
    pytest.param(dq(use_edns=0, options=[dns.edns.GenericOption(65001, b"xyz"),
                                         dns.edns.CookieOption(b"12345678", b"")]),
                 dict(edns=wire.Edns(1232, 0, False, None)), id="unknown-option-and-cookie-ignored"),
    pytest.param(dq(use_edns=0, pad=128), dict(edns=wire.Edns(1232, 0, False, None)),
                 id="padding-ignored"),
    pytest.param(edns_query(ttl=0x0000FFFF), dict(edns=wire.Edns(1232, 0, True, None)),
                 id="unknown-edns-flags-ignored"),
    pytest.param(dq("CoNtOsO.AzUrEcR.TeSt"),
                 dict(qname_key=qname_wire("contoso.azurecr.test"),
                      question=qname_wire("CoNtOsO.AzUrEcR.TeSt") + b"\x00\x01\x00\x01",
                      qname="contoso.azurecr.test"), id="mixed-case"),
    pytest.param(dq(flags=dns.flags.CD), dict(rd=False, cd=True), id="cd-set-rd-clear"),
    pytest.param(dq(".", "NS"), dict(qname_key=b"\x00", qname="", qtype=2), id="root"),
    pytest.param(dq("example.test", "AAAA", rdclass="CH"), dict(qtype=28, qclass=3),
                 id="aaaa-class-ch"),
    pytest.param(dq("example.test", "TYPE65333"), dict(qtype=65333), id="unknown-qtype"),
    pytest.param(dq(qid=0), dict(id=0), id="id-0"),
    pytest.param(dq(qid=0xFFFF), dict(id=0xFFFF), id="id-ffff"),
    pytest.param(dq("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61),
                 dict(qname="a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61),
                 id="name-255-bytes"),
]


@pytest.mark.parametrize("data, expected", PARSE_CASES)
def test_parse_query(data, expected):
    q = parse_query(data)
    assert q.opcode == 0
    for field, value in expected.items():
        got = q.qname() if field == "qname" else getattr(q, field)
        assert got == value, field
    # the question is always the raw bytes right after the header
    assert data[12:12 + len(q.question)] == q.question
    assert q.question.lower().startswith(q.qname_key)


def signed_query(keyname: str = "key.example.", **make) -> dns.message.Message:
    msg = dns.message.make_query("example.test", "SOA", id=7, **make)
    msg.use_tsig(dns.tsigkeyring.from_text({keyname: "c2VjcmV0c2VjcmV0c2VjcmV0"}), keyname=keyname)
    return msg


@pytest.mark.parametrize("keyname,edns", [("key.example.", False), ("key.example.", True),
                                          ("example.test.", False)])  # owner compressed into the qname
def test_tsig_signed_query_gets_notauth_badkey_unsigned(keyname, edns):
    """RFC 8945 5.2 / 5.3.2: we hold no keys, so NOTAUTH with TSIG error BADKEY, the TSIG RR echoed
    with an empty MAC, the request's key and algorithm names and original ID."""
    msg = signed_query(keyname, use_edns=0 if edns else False)
    data = msg.to_wire()
    with pytest.raises(WireError) as info:
        parse_query(data)
    assert info.value.rcode == 9 and "BADKEY" in str(info.value)
    reply = dns.message.from_wire(info.value.reply(EDNS_UDP_SIZE), keyring=False)  # read the TSIG, do not verify it
    assert reply.rcode() == dns.rcode.NOTAUTH and reply.id == 7 and (reply.edns == 0) is edns
    assert reply.keyname == dns.name.from_text(keyname) and reply.keyalgorithm == dns.tsig.HMAC_SHA256
    assert reply.tsig_error == dns.rcode.BADKEY and reply.mac == b""
    assert reply.tsig[0].original_id == 7 and abs(reply.tsig[0].time_signed - time.time()) < 5
    assert reply.tsig[0].fudge == msg.tsig[0].fudge
    with pytest.raises(dns.tsig.PeerBadKey):  # what a real client with the key concludes
        dns.message.from_wire(info.value.reply(EDNS_UDP_SIZE), keyring=msg.keyring, request_mac=msg.mac)


def test_tsig_not_last_is_formerr():
    data = signed_query().to_wire()
    # append an A record after the TSIG in the additional section
    extra = b"\x00" + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x7f\x00\x00\x01"
    bad = data[:10] + struct.pack("!H", struct.unpack_from("!H", data, 10)[0] + 1) + data[12:] + extra
    with pytest.raises(WireError) as info:
        parse_query(bad)
    assert info.value.rcode == FORMERR and "TSIG record is not the last record" in str(info.value)


def test_parse_query_escapes_odd_bytes_in_qname():
    q = parse_query(header() + b"\x03a.b\x02\x00\xff\x00" + b"\x00\x01\x00\x01")
    assert q.qname() == "a\\.b.\\000\\255"


# ----------------------------------------------------------------------------------------------
# malformed queries
# ----------------------------------------------------------------------------------------------

def replace_flags(data: bytes, flags: int) -> bytes:
    return data[:2] + struct.pack("!H", flags) + data[4:]


GOOD = dq("www.example.test")
LONG_NAME = ".".join(["x" * 63] * 5)

# (packet, rcode, reply sent, question echoed, OPT in reply)
MALFORMED_CASES = [
    pytest.param(b"", FORMERR, False, False, False, id="empty"),
    pytest.param(GOOD[:11], FORMERR, False, False, False, id="short-header"),
    pytest.param(replace_flags(GOOD, 0x8100), FORMERR, False, False, False, id="qr-set"),
    pytest.param(replace_flags(GOOD, 0x8000 | (4 << 11)), FORMERR, False, False, False,
                 id="qr-set-notify"),
    pytest.param(header(qd=2) + QUESTION * 2, FORMERR, True, False, False, id="qdcount-2"),
    pytest.param(header(qd=0), FORMERR, True, False, False, id="qdcount-0"),
    pytest.param(header(qd=0, ar=1) + opt_rr(), FORMERR, True, False, True, id="qdcount-0-with-opt"),
    pytest.param(header(an=1) + QUESTION + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04"
                 b"\x01\x02\x03\x04", FORMERR, True, True, False, id="ancount-1"),
    pytest.param(header(ns=1) + QUESTION + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04"
                 b"\x01\x02\x03\x04", FORMERR, True, True, False, id="nscount-1"),
    pytest.param(header(an=1) + QUESTION, FORMERR, True, True, False, id="ancount-1-missing-record"),
    pytest.param(header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", FORMERR, True, False,
                 False, id="label-64"),
    pytest.param(header() + b"\x41\x00" + b"\x00\x01\x00\x01", FORMERR, True, False, False,
                 id="bit-label-type"),
    pytest.param(header() + b"\x81\x00" + b"\x00\x01\x00\x01", FORMERR, True, False, False,
                 id="reserved-label-type"),
    pytest.param(header() + qname_wire(LONG_NAME) + b"\x00\x01\x00\x01", FORMERR, True, False,
                 False, id="name-over-255"),
    pytest.param(header() + b"\x03www\xc0\x0c\x00\x01\x00\x01", FORMERR, True, False, False,
                 id="pointer-in-question"),
    pytest.param(header() + b"\x03www\x07exa", FORMERR, True, False, False,
                 id="truncated-question-name"),
    pytest.param(header() + qname_wire("www.example.test") + b"\x00\x01\x00", FORMERR, True, False,
                 False, id="truncated-question-class"),
    pytest.param(header() + b"\x03www", FORMERR, True, False, False, id="truncated-before-root"),
    pytest.param(GOOD + b"\x00", FORMERR, True, True, False, id="trailing-garbage"),
    pytest.param(edns_query() + b"\x00\x00", FORMERR, True, True, True,
                 id="trailing-garbage-after-opt"),
    pytest.param(header(ar=1) + QUESTION, FORMERR, True, True, False, id="arcount-1-no-record"),
    pytest.param(header(ar=1) + QUESTION + opt_rr()[:-3], FORMERR, True, True, False,
                 id="truncated-opt-header"),
    pytest.param(header(ar=2) + QUESTION + opt_rr() + opt_rr(), FORMERR, True, True, True,
                 id="two-opts"),
    pytest.param(header(ar=1) + QUESTION + opt_rr(owner=b"\x01x\x00"), FORMERR, True, True, True,
                 id="opt-not-at-root"),
    pytest.param(header(ar=1) + QUESTION + opt_rr(owner=b"\xc0\x0c"), FORMERR, True, True, True,
                 id="opt-owner-pointer"),
    pytest.param(header(ar=1) + QUESTION + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 10)
                 + b"\x00\x08", FORMERR, True, True, False, id="opt-rdata-overruns-packet"),
    pytest.param(header(ar=1) + QUESTION + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 4),
                 FORMERR, True, True, False, id="opt-rdlength-but-no-rdata"),
    pytest.param(header(ar=1) + QUESTION + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 4)
                 + b"\x00\x08\x00\x00", FORMERR, True, True, True, id="ecs-empty-option"),
    pytest.param(edns_query(struct.pack("!HH", 8, 20) + b"\x00\x01\x18\x00"), FORMERR, True, True,
                 True, id="edns-option-overruns-opt"),
    pytest.param(edns_query(b"\x00\x08\x00"), FORMERR, True, True, True, id="edns-option-truncated"),
    pytest.param(edns_query(ecs_opt(3, 24, 0, b"\xcb\x00\x71")), FORMERR, True, True, True,
                 id="ecs-bad-family"),
    pytest.param(edns_query(ecs_opt(1, 33, 0, b"\xcb\x00\x71\x4d\x00")), FORMERR, True, True, True,
                 id="ecs-prefix-33"),
    pytest.param(edns_query(ecs_opt(2, 129, 0, b"\x20" + b"\x00" * 16)), FORMERR, True, True, True,
                 id="ecs-v6-prefix-129"),
    pytest.param(edns_query(ecs_opt(1, 24, 0, b"\xcb\x00\x71\x00")), FORMERR, True, True, True,
                 id="ecs-address-too-long"),
    pytest.param(edns_query(ecs_opt(1, 24, 0, b"\xcb\x00")), FORMERR, True, True, True,
                 id="ecs-address-too-short"),
    pytest.param(edns_query(ecs_opt(1, 24, 16, b"\xcb\x00\x71")), FORMERR, True, True, True,
                 id="ecs-nonzero-scope"),
    pytest.param(edns_query(ecs_opt(1, 20, 0, b"\xcb\x00\x7f")), FORMERR, True, True, True,
                 id="ecs-nonzero-host-bits"),
    pytest.param(edns_query(ecs_opt(0, 8, 0, b"\x0a")), FORMERR, True, True, True,
                 id="ecs-family-0-with-prefix"),
    pytest.param(edns_query(b"\x00\x08\x00\x02\x00\x01"), FORMERR, True, True, True,
                 id="ecs-shorter-than-4"),
    pytest.param(edns_query(ecs_opt(1, 24, 0, b"\xcb\x00\x71") * 2), FORMERR, True, True, True,
                 id="two-ecs-options"),
    pytest.param(dns.message.make_query("example.test", "SOA", id=0x1234).to_wire()[:2]
                 + struct.pack("!H", 4 << 11) + GOOD[4:], NOTIMP, True, True, False,
                 id="opcode-notify"),
    pytest.param(replace_flags(edns_query(), (4 << 11) | 0x0100), NOTIMP, True, True, True,
                 id="opcode-notify-edns"),
    pytest.param(replace_flags(GOOD, 5 << 11), NOTIMP, True, True, False, id="opcode-update"),
    pytest.param(replace_flags(header(qd=0), 6 << 11), NOTIMP, True, False, False,
                 id="opcode-dso-no-question"),
    pytest.param(replace_flags(header() + b"\x03www\xc0\x0c", 4 << 11), NOTIMP, True, False, False,
                 id="opcode-notify-bad-question"),
]


@pytest.mark.parametrize("data, rcode, replies, echoes, has_opt", MALFORMED_CASES)
def test_malformed_query(data, rcode, replies, echoes, has_opt):
    with pytest.raises(WireError) as info:
        parse_query(data)
    err = info.value
    assert err.rcode == rcode
    assert str(err)  # says what was wrong
    reply = err.reply(EDNS_UDP_SIZE)
    if not replies:
        assert reply is None
        return
    assert reply is not None
    msg = decode(reply)
    qid, qflags = struct.unpack_from("!HH", data)
    assert msg.id == qid
    assert msg.flags & dns.flags.QR
    assert not msg.flags & dns.flags.AA
    assert msg.rcode() == rcode
    query_opcode = qflags & 0x7800
    # RD and CD are QUERY flags: copied for QUERY, never for another opcode (genreport's opcodeflg)
    assert (msg.flags & (dns.flags.RD | dns.flags.CD)) == (0 if query_opcode else qflags & 0x0110)
    assert (reply[2] >> 3) & 0xF == (qflags >> 11) & 0xF  # opcode copied
    if echoes:
        assert len(msg.question) == 1
        qlen = len(reply) - 12 - (11 if has_opt else 0)
        assert reply[12:12 + qlen] == data[12:12 + qlen]
    else:
        assert len(msg.question) == 0
    assert (msg.edns >= 0) == has_opt
    if has_opt:
        assert msg.payload == EDNS_UDP_SIZE


# (query that fails to parse but speaks EDNS, its rcode)
ERRORS_WITH_OPT = [
    pytest.param(edns_query() + b"\x00", FORMERR, id="formerr-trailing-garbage"),
    pytest.param(header(ar=2) + QUESTION + opt_rr() + opt_rr(), FORMERR, id="formerr-two-opts"),
    pytest.param(replace_flags(edns_query(), (4 << 11) | 0x0100), NOTIMP, id="notimp"),
    pytest.param(signed_query(use_edns=0).to_wire(), 9, id="notauth-badkey"),
]


@pytest.mark.parametrize("data, rcode", ERRORS_WITH_OPT)
@pytest.mark.parametrize("udp_size", [512, EDNS_UDP_SIZE, 1400, 4096])
def test_error_reply_advertises_the_udp_size_given(data, rcode, udp_size):
    """Like every other reply, an error reply made while parsing advertises our configured size."""
    with pytest.raises(WireError) as info:
        parse_query(data)
    assert info.value.rcode == rcode
    msg = dns.message.from_wire(info.value.reply(udp_size), keyring=False)
    assert msg.edns == 0 and msg.payload == udp_size


def test_malformed_messages_name_the_defect():
    with pytest.raises(WireError, match="pointer"):
        parse_query(header() + b"\x03www\xc0\x0c\x00\x01\x00\x01")
    with pytest.raises(WireError, match="ECS"):
        parse_query(edns_query(ecs_opt(1, 24, 8, b"\xcb\x00\x71")))
    with pytest.raises(WireError, match="OPT"):
        parse_query(header(ar=2) + QUESTION + opt_rr() + opt_rr())


# ----------------------------------------------------------------------------------------------
# encoding answers
# ----------------------------------------------------------------------------------------------

CHAIN = [
    "contoso.azurecr.test 60 CNAME contoso.privatelink.azurecr.test.",
    "contoso.privatelink.azurecr.test 60 CNAME weu.data.azurecr.test.",
    "weu.data.azurecr.test 30 CNAME weu-1.data.azurecr.test.",
    "weu-1.data.azurecr.test 30 CNAME lb.weu-1.data.azurecr.test.",
    "lb.weu-1.data.azurecr.test 20 A 10.1.2.3",
]
SOA_LINE = ("azurecr.test 300 SOA ns1.azurecr.test. hostmaster.azurecr.test. "
            "2024010101 3600 600 86400 60")
TOKEN = "".join(chr(0x61 + i % 26) for i in range(300))  # one 300-byte string: needs splitting
BIG_TXT = [f'_acme.azurecr.test 300 TXT "token-{i:02d}-{TOKEN}"' for i in range(12)]
MX_LINES = ["azurecr.test 3600 MX 10 mx1.azurecr.test.", "azurecr.test 3600 MX 20 mx2.mail.test."]
CAA_LINES = ['azurecr.test 3600 CAA 0 issue "letsencrypt.org"',
             'azurecr.test 3600 CAA 128 iodef "mailto:security@azurecr.test"']


def split_txt(line: str) -> str:
    """dnspython won't read strings > 255 bytes; the expected text splits them like we must."""
    name, ttl, rtype, text = line.split(None, 3)
    value = text.strip('"')
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)]
    return f"{name} {ttl} {rtype} " + " ".join(f'"{c}"' for c in chunks)


ENCODE_CASES = [
    pytest.param("contoso.azurecr.test", "A", Answer(NOERROR, answer=tuple(rr(x) for x in CHAIN)),
                 dict(answer=CHAIN), id="cname-chain-4-plus-a"),
    pytest.param("nope.azurecr.test", "A", Answer(NXDOMAIN, authority=(rr(SOA_LINE),)),
                 dict(authority=[SOA_LINE], rcode=NXDOMAIN), id="nxdomain-soa"),
    pytest.param("_acme.azurecr.test", "TXT", Answer(NOERROR, answer=tuple(rr(x) for x in BIG_TXT)),
                 dict(answer=[split_txt(x) for x in BIG_TXT]), id="large-txt-rrset"),
    pytest.param("azurecr.test", "MX", Answer(NOERROR, answer=tuple(rr(x) for x in MX_LINES)),
                 dict(answer=MX_LINES), id="mx"),
    pytest.param("azurecr.test", "CAA", Answer(NOERROR, answer=tuple(rr(x) for x in CAA_LINES)),
                 dict(answer=CAA_LINES), id="caa"),
    pytest.param("azurecr.test", "NS", Answer(
        NOERROR, answer=(rr("azurecr.test 3600 NS ns1.azurecr.test."),
                         rr("azurecr.test 3600 NS ns2.azurecr.test.")),
        additional=(rr("ns1.azurecr.test 3600 A 192.0.2.1"),
                    rr("ns1.azurecr.test 3600 AAAA 2001:db8::1"))),
        dict(answer=["azurecr.test 3600 NS ns1.azurecr.test.", "azurecr.test 3600 NS ns2.azurecr.test."],
             additional=["ns1.azurecr.test 3600 A 192.0.2.1", "ns1.azurecr.test 3600 AAAA 2001:db8::1"]),
        id="ns-with-glue"),
    pytest.param("_https._tcp.azurecr.test", "SRV", Answer(
        NOERROR, answer=(rr("_https._tcp.azurecr.test 60 SRV 10 5 443 weu.data.azurecr.test."),)),
        dict(answer=["_https._tcp.azurecr.test 60 SRV 10 5 443 weu.data.azurecr.test."]), id="srv"),
    pytest.param("azurecr.test", "HTTPS", Answer(
        NOERROR, answer=(rr('azurecr.test 60 HTTPS 1 . alpn="h2,h3" port=443 ipv4hint=192.0.2.1'),)),
        dict(answer=['azurecr.test 60 HTTPS 1 . alpn="h2,h3" port=443 ipv4hint=192.0.2.1']), id="https"),
    pytest.param("4.3.2.1.in-addr.arpa", "PTR", Answer(
        NOERROR, answer=(rr("4.3.2.1.in-addr.arpa 60 PTR host.azurecr.test."),)),
        dict(answer=["4.3.2.1.in-addr.arpa 60 PTR host.azurecr.test."]), id="ptr"),
    pytest.param("azurecr.test", "AAAA", Answer(NOERROR, authority=(rr(SOA_LINE),)),
                 dict(authority=[SOA_LINE]), id="nodata-soa"),
    pytest.param(".", "NS", Answer(REFUSED, authoritative=False), dict(rcode=REFUSED, aa=False),
                 id="refused-root-empty"),
    pytest.param("x.azurecr.test", "A", Answer(
        NOERROR, answer=(rr("x.azurecr.test 60 A 192.0.2.7"),), client_dependent=True),
        dict(answer=["x.azurecr.test 60 A 192.0.2.7"]), id="client-dependent"),
]


@pytest.mark.parametrize("qname, qtype, answer, expected", ENCODE_CASES)
def test_encode_and_build(qname, qtype, answer, expected):
    query = dq(qname, qtype, use_edns=0)
    reply = respond(query, answer, udp=False)
    msg = dns.message.from_wire(reply)
    assert msg.id == 0x1234
    assert msg.flags & dns.flags.QR and msg.flags & dns.flags.RD
    assert bool(msg.flags & dns.flags.AA) == expected.get("aa", True)
    assert not msg.flags & dns.flags.TC
    assert msg.rcode() == expected.get("rcode", NOERROR)
    assert msg.question[0].name == dns.name.from_text(qname)
    assert rrs(msg.answer) == expected_rrs(expected.get("answer", []))
    assert rrs(msg.authority) == expected_rrs(expected.get("authority", []))
    assert rrs(msg.additional) == expected_rrs(expected.get("additional", []))
    assert msg.edns == 0 and msg.payload == EDNS_UDP_SIZE
    # dnspython agrees on the record count
    assert struct.unpack_from("!HHHH", reply, 4) == (
        1, len(answer.answer), len(answer.authority), len(answer.additional) + 1)


def uncompressed_size(msg: dns.message.Message) -> int:
    size = 12
    for q in msg.question:
        size += len(q.name.to_wire()) + 4
    for section in (msg.answer, msg.authority, msg.additional):
        for rrset in section:
            for rd in rrset:
                size += len(rrset.name.to_wire()) + 10 + len(rd.to_digestable())
    return size


def test_compression_happens():
    answer = Answer(NOERROR, answer=tuple(rr(x) for x in CHAIN), authority=(rr(SOA_LINE),))
    reply = respond(dq("contoso.azurecr.test", use_edns=False), answer)
    msg = dns.message.from_wire(reply)
    assert len(reply) < uncompressed_size(msg) - 100
    # the first owner is the question name itself: a 2-byte pointer to offset 12
    body = reply[12 + len(qname_wire("contoso.azurecr.test")) + 4:]
    assert body[:2] == b"\xc0\x0c"


def test_packed_answer_fields():
    answer = Answer(NXDOMAIN, authority=(rr(SOA_LINE),), authoritative=True, client_dependent=True)
    packed = encode_answer(answer, len(qname_wire("a.azurecr.test")), "a.azurecr.test")
    assert isinstance(packed, PackedAnswer)
    assert (packed.rcode, packed.authoritative, packed.ancount, packed.nscount, packed.arcount,
            packed.client_dependent) == (NXDOMAIN, True, 0, 1, 0, True)


def test_question_case_echoed():
    query = dq("CoNtOsO.AzUrEcR.TeSt", use_edns=0)
    reply = respond(query, Answer(NOERROR, answer=tuple(rr(x) for x in CHAIN)))
    q = parse_query(query)
    assert reply[12:12 + len(q.question)] == q.question
    msg = dns.message.from_wire(reply)
    assert msg.question[0].name.to_text() == "CoNtOsO.AzUrEcR.TeSt."
    assert rrs(msg.answer) == expected_rrs(CHAIN)


def test_rdata_names_not_compressed_for_opaque_types():
    # SRV target equals an earlier owner: RFC 3597 forbids compressing it, so it is written out
    answer = Answer(NOERROR, answer=(rr("_x._tcp.azurecr.test 60 SRV 1 1 1 _x._tcp.azurecr.test."),))
    reply = respond(dq("_x._tcp.azurecr.test", "SRV"), answer)
    assert reply.endswith(qname_wire("_x._tcp.azurecr.test"))


@pytest.mark.parametrize("answer, qname, qlen, match", [
    pytest.param(Answer(NOERROR), "a.test", 5, "wire form", id="qname-length-mismatch"),
    pytest.param(Answer(NOERROR, answer=(RR("a.test", CNAME, 60, NameRdata("x" * 64 + ".test")),)),
                 "a.test", 8, "63", id="label-too-long"),
    pytest.param(Answer(NOERROR, answer=(RR("a.test", A, 60, AddressRdata(
        ipaddress.ip_address("::1"))),)), "a.test", 8, "holds", id="a-with-ipv6"),
    pytest.param(Answer(NOERROR, answer=(RR("a.test", A, -1, AddressRdata(
        ipaddress.ip_address("1.2.3.4"))),)), "a.test", 8, "TTL", id="negative-ttl"),
    pytest.param(Answer(5000), "a.test", 8, "rcode", id="rcode-too-big"),
])
def test_encode_answer_rejects(answer, qname, qlen, match):
    with pytest.raises(ValueError, match=match):
        encode_answer(answer, qlen, qname)


ORIGIN = "azurecr.test"


def test_large_txt_rrset_roundtrip():
    # e.g. many certificate-validation tokens at one name: too big for UDP, whole over TCP
    tokens = [f"validation-token-{i:03d}-" + "k" * 400 for i in range(30)]
    answer = Answer(NOERROR, answer=tuple(
        RR("_validation.azurecr.test", TXT, 300, rdata_from_text(TXT, f'"{t}"', ORIGIN))
        for t in tokens))
    reply = respond(dq("_validation.azurecr.test", "TXT", use_edns=0), answer, udp=False)
    msg = dns.message.from_wire(reply)
    got = sorted(b"".join(rd.strings).decode() for rd in msg.answer[0])
    assert got == sorted(tokens)
    udp_reply = respond(dq("_validation.azurecr.test", "TXT", use_edns=0), answer)
    assert dns.message.from_wire(udp_reply).flags & dns.flags.TC


# ----------------------------------------------------------------------------------------------
# truncation, EDNS and ECS in replies
# ----------------------------------------------------------------------------------------------

def a_records(count: int, name="big.azurecr.test") -> Answer:
    return Answer(NOERROR, answer=tuple(
        RR(name, A, 60, AddressRdata(ipaddress.IPv4Address(0x0A000000 + i))) for i in range(count)))


# (query kwargs, answer, tcp?, truncated?, expected limit)
TRUNCATION_CASES = [
    pytest.param(dict(use_edns=False), a_records(40), False, True, 512, id="no-edns-over-512"),
    pytest.param(dict(use_edns=False), a_records(20), False, False, 512, id="no-edns-fits-512"),
    pytest.param(dict(use_edns=0, payload=4096), a_records(60), False, False, 1232,
                 id="edns-4096-fits-1232"),
    pytest.param(dict(use_edns=0, payload=4096), a_records(80), False, True, 1232,
                 id="edns-4096-limited-to-1232"),
    pytest.param(dict(use_edns=0, payload=600), a_records(40), False, True, 600,
                 id="edns-600-limit-600"),
    pytest.param(dict(use_edns=0, payload=100), a_records(40), False, True, 512,
                 id="edns-tiny-size-floor-512"),
    pytest.param(dict(use_edns=False), a_records(200), True, False, 512, id="tcp-no-limit"),
    pytest.param(dict(use_edns=0, want_dnssec=True, options=[V4_ECS]), a_records(200), False, True,
                 1232, id="edns-do-ecs-truncated"),
]


@pytest.mark.parametrize("qkw, answer, tcp, truncated, limit", TRUNCATION_CASES)
def test_truncation(qkw, answer, tcp, truncated, limit):
    query = dq("big.azurecr.test", **qkw)
    q = parse_query(query)
    assert udp_limit(q) == limit
    reply = respond(query, answer, udp=not tcp, ecs_scope=24)
    msg = dns.message.from_wire(reply)
    assert bool(msg.flags & dns.flags.TC) == truncated
    if not tcp:
        assert len(reply) <= limit
    assert len(msg.question) == 1
    if truncated:
        assert msg.answer == [] and msg.authority == []
    else:
        assert len(msg.answer[0]) == len(answer.answer)
    if q.edns is not None:
        assert msg.edns == 0 and msg.payload == EDNS_UDP_SIZE  # OPT kept on truncated replies
        assert bool(msg.ednsflags & dns.flags.DO) == q.edns.dnssec_ok
    else:
        assert msg.edns == -1


# (ECS option sent, scope given, expected echo as (address, srclen, scopelen) or None)
ECS_CASES = [
    pytest.param(V4_ECS, 24, ("203.0.113.0", 24, 24), id="v4-scope-24"),
    pytest.param(V4_ECS, 0, ("203.0.113.0", 24, 0), id="v4-scope-0"),
    pytest.param(V4_ECS, 16, ("203.0.113.0", 24, 16), id="v4-scope-shorter"),
    pytest.param(V4_ECS, None, None, id="no-scope-no-echo"),
    pytest.param(V6_ECS, 48, ("2001:db8:abcd:1200::", 56, 48), id="v6-scope-48"),
    pytest.param(dns.edns.ECSOption("198.51.100.0", 0), 0, ("0.0.0.0", 0, 0), id="v4-prefix-0"),
    pytest.param(dns.edns.ECSOption("203.0.113.77", 21), 21, ("203.0.112.0", 21, 21),
                 id="v4-prefix-21"),
    pytest.param(None, 24, None, id="no-ecs-in-query"),
]


@pytest.mark.parametrize("option, scope, echo", ECS_CASES)
def test_ecs_echo(option, scope, echo):
    query = dq("x.azurecr.test", use_edns=0, options=[option] if option else [])
    reply = respond(query, Answer(NOERROR, answer=(rr("x.azurecr.test 60 A 192.0.2.7"),),
                                  client_dependent=True), ecs_scope=scope)
    msg = dns.message.from_wire(reply)
    ecs = [o for o in msg.options if o.otype == dns.edns.OptionType.ECS]
    if echo is None:
        assert ecs == []
        return
    assert len(ecs) == 1
    assert (ecs[0].address, ecs[0].srclen, ecs[0].scopelen) == echo
    assert rrs(msg.answer) == expected_rrs(["x.azurecr.test 60 A 192.0.2.7"])


def test_ecs_address_bytes_echoed_as_sent():
    query = edns_query(ecs_opt(1, 20, 0, b"\xcb\x00\x70"))
    reply = respond(query, Answer(NOERROR), ecs_scope=20)
    assert reply.endswith(ecs_opt(1, 20, 20, b"\xcb\x00\x70"))


def test_badvers_via_error_response():
    q = parse_query(dq(use_edns=1, want_dnssec=True))
    assert q.edns.version == 1
    msg = dns.message.from_wire(error_response(q, BADVERS))
    assert msg.rcode() == dns.rcode.BADVERS
    assert msg.edns == 0  # we answer with the version we speak
    assert msg.ednsflags & dns.flags.DO
    assert not msg.flags & dns.flags.AA
    assert msg.question[0].name == dns.name.from_text("contoso.azurecr.test")


def test_badvers_in_packed_answer():
    q = parse_query(dq(use_edns=1))
    packed = encode_answer(Answer(BADVERS, authoritative=False), len(q.qname_key), q.qname())
    msg = dns.message.from_wire(build_response(q, packed, max_udp_size=512, ecs_scope=None))
    assert msg.rcode() == dns.rcode.BADVERS


@pytest.mark.parametrize("rcode, edns, expected", [
    pytest.param(REFUSED, False, REFUSED, id="refused"),
    pytest.param(REFUSED, True, REFUSED, id="refused-edns"),
    pytest.param(FORMERR, True, FORMERR, id="formerr-edns"),
    pytest.param(NOTIMP, False, NOTIMP, id="notimp"),
    pytest.param(SERVFAIL, False, SERVFAIL, id="servfail"),
    pytest.param(BADVERS, False, SERVFAIL, id="badvers-without-edns-is-servfail"),
])
def test_error_response(rcode, edns, expected):
    q = parse_query(dq("Www.Example.Test", "AAAA", use_edns=0 if edns else False, flags=dns.flags.RD
                       | dns.flags.CD))
    reply = error_response(q, rcode)
    msg = dns.message.from_wire(reply)
    assert msg.id == 0x1234 and msg.rcode() == expected
    assert msg.flags & dns.flags.QR and msg.flags & dns.flags.RD and msg.flags & dns.flags.CD
    assert not msg.flags & (dns.flags.AA | dns.flags.TC | dns.flags.RA)
    assert (msg.edns == 0) == edns
    assert msg.answer == msg.authority == [] and msg.additional == []
    assert reply[12:12 + len(q.question)] == q.question


def test_flags_in_build_response():
    q = parse_query(dq(flags=dns.flags.CD, want_dnssec=True))
    packed = encode_answer(Answer(NOERROR, authoritative=False), len(q.qname_key), q.qname())
    msg = dns.message.from_wire(build_response(q, packed, max_udp_size=None, ecs_scope=None))
    assert msg.flags & dns.flags.CD and not msg.flags & (dns.flags.RD | dns.flags.AA | dns.flags.RA)
    assert msg.ednsflags & dns.flags.DO


# ----------------------------------------------------------------------------------------------
# property tests: any input, only WireError; every reply readable by dnspython
# ----------------------------------------------------------------------------------------------

SEED_QUERIES = [
    dq(),
    dq("CoNtOsO.AzUrEcR.TeSt", "AAAA", use_edns=0, payload=4096),
    dq(want_dnssec=True, options=[V4_ECS]),
    dq("x.test", "TXT", use_edns=0, options=[V6_ECS, dns.edns.CookieOption(b"abcdefgh", b"")]),
    dq(".", "NS", use_edns=1),
    edns_query(ecs_opt(1, 20, 0, b"\xcb\x00\x70")),
]
ANY_PACKED = encode_answer(Answer(NOERROR, answer=(rr("x.test 60 A 192.0.2.1"),)), 8, "x.test")


def check_any_input(data: bytes) -> None:
    try:
        q = parse_query(data)
    except WireError as err:
        assert err.rcode in (FORMERR, NOTIMP)
        reply = err.reply(EDNS_UDP_SIZE)
        if reply is None:
            assert len(data) < 12 or data[2] & 0x80
        else:
            msg = decode(reply)
            assert msg.id == struct.unpack_from("!H", data)[0]
            assert msg.flags & dns.flags.QR
            assert msg.rcode() == err.rcode
        return
    assert isinstance(q, Query)
    assert q.question == data[12:12 + len(q.question)]
    q.qname()
    # whatever parsed can be answered, and dnspython can read the answers
    for reply in (error_response(q, REFUSED), error_response(q, BADVERS),
                  build_response(q, ANY_PACKED, max_udp_size=udp_limit(q), ecs_scope=0),
                  build_response(q, ANY_PACKED, max_udp_size=None, ecs_scope=None)):
        msg = decode(reply)
        assert msg.id == q.id and msg.flags & dns.flags.QR


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_property_arbitrary_bytes(data):
    check_any_input(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=12), st.sampled_from(SEED_QUERIES))
def test_property_random_header_valid_body(hdr, seed):
    check_any_input(hdr + seed[12:])


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.just(0)),
)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(SEED_QUERIES), st.lists(mutation, min_size=1, max_size=4))
def test_property_mutated_queries(seed, mutations):
    data = bytearray(seed)
    for kind, where, value in mutations:
        if not data:
            break
        i = where % len(data)
        if kind == "flip":
            data[i] = value
        elif kind == "truncate":
            del data[i:]
        elif kind == "insert":
            data.insert(i, value)
        else:
            del data[i]
    check_any_input(bytes(data))


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                min_size=1, max_size=63)


@settings(max_examples=300, deadline=None)
@given(st.lists(label, min_size=0, max_size=4), st.integers(0, 0xFFFF), st.integers(1, 65535),
       st.booleans(), st.integers(0, 32), st.ip_addresses(v=4))
def test_property_dnspython_queries_roundtrip(labels, qid, rdtype, with_ecs, prefix, addr):
    name = ".".join(labels) + "."
    opts = [dns.edns.ECSOption(str(addr), prefix)] if with_ecs else []
    q = parse_query(dq(name, rdtype, qid=qid, use_edns=0, options=opts))
    assert q.id == qid and q.qtype == rdtype
    assert q.qname() == name.rstrip(".").lower()
    if with_ecs:
        net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
        assert q.edns.ecs == ClientSubnet(1, prefix, net.network_address)
        reply = respond(dq(name, rdtype, qid=qid, use_edns=0, options=opts), Answer(NOERROR),
                        ecs_scope=prefix)
        (ecs,) = dns.message.from_wire(reply).options
        assert (ecs.address, ecs.srclen, ecs.scopelen) == (str(net.network_address), prefix, prefix)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=63), min_size=1, max_size=3))
def test_property_odd_qnames_encode_back(labels):
    """Whatever name a query carries, qname() text encodes back to the same wire name, so a
    slow-path answer (encode_answer(..., query.qname())) works for every name."""
    qname = b"".join(bytes([len(lab)]) + lab for lab in labels) + b"\x00"
    q = parse_query(header() + qname + b"\x00\x01\x00\x01")
    soa = rr(SOA_LINE)
    packed = encode_answer(Answer(NXDOMAIN, authority=(soa,)), len(q.qname_key), q.qname())
    msg = dns.message.from_wire(build_response(q, packed, max_udp_size=None, ecs_scope=None))
    assert msg.question[0].name == dns.name.from_wire(qname, 0)[0]
    assert rrs(msg.authority) == expected_rrs([SOA_LINE])
