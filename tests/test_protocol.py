"""DNS protocol behaviour of the query engine: EDNS, BADVERS, truncation, letter case, opcodes,
malformed input, ECS scope. Real wire bytes in and out (dnspython on the other side)."""
from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest

from tests.dnstest import ask, engine_from, make_query, rcode_text, variant


@pytest.fixture(scope="module")
def engine():
    return engine_from()


def big_txt_engine():
    data = variant()
    data["zone"]["records"].append({"name": "big", "type": "TXT", "ttl": 60,
                                    "values": [f"token-{i:02d}-" + "x" * 90 for i in range(30)]})
    return engine_from(data)


def raw(engine, wire: bytes, tcp=False, client="127.0.0.5"):
    reply = engine.handle(wire, client, tcp)
    return None if reply is None else dns.message.from_wire(reply)


def opt_of(reply):
    return reply.opt  # dnspython: the OPT RR or None


def test_edns_query_gets_opt_with_our_buffer_size(engine):
    reply = ask(engine, "contoso.azurecr.test", payload=4096)
    assert reply.edns == 0 and reply.payload == 1232


def test_non_edns_query_gets_no_opt(engine):
    reply = ask(engine, "contoso.azurecr.test", edns=False)
    assert reply.edns == -1


def test_edns_version_above_zero_is_badvers(engine):
    query = dns.message.make_query("contoso.azurecr.test", "A", use_edns=1)
    reply = raw(engine, query.to_wire())
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0 and not reply.answer


def test_unknown_edns_options_and_flags_are_ignored(engine):
    query = dns.message.make_query("contoso.azurecr.test", "A", use_edns=0, ednsflags=0x4000 | 0x0001,
                                   options=[dns.edns.GenericOption(65001, b"hello"),
                                            dns.edns.CookieOption(b"12345678", b"")])
    reply = raw(engine, query.to_wire())
    assert rcode_text(reply) == "NOERROR" and len(reply.answer) == 4


def test_dnssec_ok_bit_is_copied(engine):
    query = dns.message.make_query("azurecr.test", "SOA", want_dnssec=True)
    assert raw(engine, query.to_wire()).ednsflags & dns.flags.DO


@pytest.mark.parametrize("edns,payload,limit", [(False, 0, 512), (True, 512, 512), (True, 4096, 1232)])
def test_large_answer_truncated_over_udp_whole_over_tcp(edns, payload, limit):
    engine = big_txt_engine()
    query = make_query("big.azurecr.test", "TXT", edns=edns, payload=payload or 512)
    udp = engine.handle(query.to_wire(), "127.0.0.5", False)
    assert len(udp) <= limit
    udp_reply = dns.message.from_wire(udp)
    assert udp_reply.flags & dns.flags.TC and not udp_reply.answer
    assert (udp_reply.edns == 0) is edns  # OPT kept on truncated EDNS replies
    tcp_reply = dns.message.from_wire(engine.handle(query.to_wire(), "127.0.0.5", True))
    assert not tcp_reply.flags & dns.flags.TC
    assert len(tcp_reply.answer[0]) == 30


def test_small_answer_not_truncated(engine):
    assert not ask(engine, "contoso.azurecr.test", edns=False).flags & dns.flags.TC


def test_question_letter_case_is_echoed(engine):
    query = make_query("CoNtOsO.AzUrEcR.tEsT", "A")
    reply = engine.handle(query.to_wire(), "127.0.0.5", False)
    assert b"\x07CoNtOsO\x07AzUrEcR\x04tEsT\x00" in reply
    message = dns.message.from_wire(reply)
    assert message.question[0].name.to_text() == "CoNtOsO.AzUrEcR.tEsT."
    assert len(message.answer) == 4


@pytest.mark.parametrize("opcode", [dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE])
def test_unknown_opcode_is_notimp(engine, opcode):
    query = make_query("azurecr.test", "SOA")
    query.set_opcode(opcode)
    reply = raw(engine, query.to_wire())
    assert reply.rcode() == dns.rcode.NOTIMP and reply.id == query.id


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
def test_zone_transfers_are_refused(engine, qtype):
    assert rcode_text(ask(engine, "azurecr.test", qtype)) == "REFUSED"


def test_chaos_class_is_refused(engine):
    query = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    assert raw(engine, query.to_wire()).rcode() == dns.rcode.REFUSED


MALFORMED = [
    ("too short for a header", b"\x12\x34\x01", None),
    ("a response, not a query", struct.pack("!HHHHHH", 0x1234, 0x8000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01", None),
    ("two questions", struct.pack("!HHHHHH", 0x1234, 0, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 2, "FORMERR"),
    ("question cut short", struct.pack("!HHHHHH", 0x1234, 0, 1, 0, 0, 0) + b"\x07contoso\x07azu", "FORMERR"),
    ("label longer than 63", struct.pack("!HHHHHH", 0x1234, 0, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "FORMERR"),
    ("no question", struct.pack("!HHHHHH", 0x1234, 0, 0, 0, 0, 0), "FORMERR"),
]


@pytest.mark.parametrize("wire,rcode", [(w, r) for _, w, r in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_input_gets_formerr_or_silence_and_the_engine_keeps_answering(engine, wire, rcode):
    reply = engine.handle(wire, "127.0.0.5", False)
    if rcode is None:
        assert reply is None
    else:
        if len(reply) > 12:
            dns.message.from_wire(reply, question_only=True)  # the reply's question part must parse
        assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == dns.rcode.from_text(rcode)
        assert reply[2] & 0x80  # QR
    assert rcode_text(ask(engine, "contoso.azurecr.test")) == "NOERROR"


@pytest.mark.parametrize("name,client,ecs,scope", [
    ("contoso.azurecr.test", "127.0.0.5", "198.51.100.0/24", 24),     # region choice depends on the subnet
    ("contoso.tm.azurecr.test", "127.0.0.5", "203.0.113.0/24", 24),
    # differs in the VNet view, but only a trusted resolver's ECS chooses the view: from anyone else
    # the answer is the same for every subnet (scope 0)
    ("contoso.eastus.geo.azurecr.test", "127.0.0.53", "198.51.100.0/24", 24),
    ("contoso.eastus.geo.azurecr.test", "127.0.0.53", "10.1.2.0/24", 24),
    ("contoso.eastus.geo.azurecr.test", "127.0.0.5", "198.51.100.0/24", 0),
    ("contoso.eastus.geo.azurecr.test", "127.0.0.70", "10.1.2.0/24", 0),
    ("contoso.eastus.reg.azurecr.test", "127.0.0.53", "198.51.100.0/24", 0),    # the same for everyone
    ("ns1.azurecr.test", "127.0.0.5", "198.51.100.0/24", 0),
    ("nothing.azurecr.test", "127.0.0.53", "198.51.100.0/24", 0),
    ("contoso.azurecr.test", "127.0.0.5", "198.51.100.0/22", 22),
])
def test_ecs_reply_carries_scope(engine, name, client, ecs, scope):
    reply = ask(engine, name, client=client, ecs=ecs)
    options = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
    assert len(options) == 1
    address, source = ecs.split("/")
    assert options[0].address == address and options[0].srclen == int(source)
    assert options[0].scopelen == scope


def test_no_ecs_in_reply_when_the_query_had_none(engine):
    reply = ask(engine, "contoso.azurecr.test")
    assert not any(isinstance(o, dns.edns.ECSOption) for o in reply.options)


@pytest.mark.parametrize("client,last", [
    ("198.51.100.7", "contoso.tm.azurecr.test. 30 IN CNAME contoso.eastus.reg.azurecr.test."),
    ("127.0.0.53", "contoso.tm.azurecr.test. 30 IN CNAME contoso.eastus.reg.azurecr.test."),
    ("127.0.0.70", "contoso.privatelink.azurecr.test. 10 IN A 10.1.0.4"),
])
def test_ecs_source_prefix_zero_means_no_client_information(engine, client, last):
    # the resolver hides the client: the default region (not the source's westeurope), and the
    # view of the packet's source address (a VNet resolver still gets its VNet's answer)
    reply = ask(engine, "contoso.azurecr.test", client=client, ecs="0.0.0.0/0")
    assert reply.answer[-2 if len(reply.answer) > 2 else -1].to_text() == last
