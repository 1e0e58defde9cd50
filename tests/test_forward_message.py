"""dnsd.forward.message against dnspython: the walker reads names and records as dnspython writes
them (compressed), cleaning drops what must not pass (in-zone owners, additional, OPT), the messages
we write decode in dnspython to the records we meant, and no upstream bytes, however broken, make the
walker raise anything but MalformedReply."""
from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsd.forward.message import (
    Cleaned,
    MalformedReply,
    clean_reply,
    client_reply,
    error_reply,
    name_to_wire,
    read_name,
    reply_matches,
    upstream_query,
    wire_to_text,
)
from tests.forwardkit import ZONE, decode, in_zone, query, reply_to

WWW = b"\x03www\x07example\x03com\x00"

# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

READ_NAME_CASES = [
    # (message, position, expected (name, end) or the error's words)
    (WWW, 0, (WWW, len(WWW))),
    (b"\x00", 0, (b"\x00", 1)),
    (b"\x07example\x03com\x00" + b"\x03WWW\xc0\x00", 13, (b"\x03WWW\x07example\x03com\x00", 19)),
    (b"\x03com\x00" + b"\x07example\xc0\x00" + b"\x03www\xc0\x05", 15, (WWW, 21)),  # pointer to pointer
    (b"\xc0\x00", 0, "backwards"),  # points at itself
    (b"\xc0\x02\x00", 0, "backwards"),  # forwards
    (b"\x01a\xc0\x00", 0, "longer than 255"),  # a loop through a label grows the name until it stops
    (b"\x41" + b"a" * 65 + b"\x00", 0, "label type"),
    (b"\x80\x00", 0, "label type"),
    (b"\x03ww", 0, "past the end"),
    (b"\x03www", 0, "past the end"),
    (b"\xc0", 0, "truncated compression pointer"),
    ((b"\x3f" + b"a" * 63) * 4 + b"\x00", 0, "longer than 255"),
    ((b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"a" * 61 + b"\x00", 0, (None, 255)),  # exactly 255 bytes
]


@pytest.mark.parametrize("msg, pos, expected", READ_NAME_CASES)
def test_read_name(msg, pos, expected):
    if isinstance(expected, str):
        with pytest.raises(MalformedReply, match=expected):
            read_name(msg, pos)
    else:
        name, end = read_name(msg, pos)
        assert end == expected[1]
        assert expected[0] is None or name == expected[0]


@pytest.mark.parametrize("text, wire, back", [
    ("www.example.com", WWW, "www.example.com."),
    ("WWW.Example.COM.", WWW, "www.example.com."),
    ("", b"\x00", "."),
    (".", b"\x00", "."),
])
def test_name_to_wire_and_back(text, wire, back):
    assert name_to_wire(text) == wire
    assert wire_to_text(wire) == back


def test_wire_to_text_escapes_unusual_bytes():
    assert wire_to_text(b"\x03a.b\x02\x00z\x00") == "a\\046b.\\000z."


@pytest.mark.parametrize("text", ["a..b", "a" * 64 + ".com", ".".join(["a" * 60] * 5), "ex\\.ample"])
def test_name_to_wire_refuses(text):
    with pytest.raises(ValueError):
        name_to_wire(text)


# ---------------------------------------------------------------------------------------------
# Upstream query and reply checks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("client_edns, dnssec_ok, cd", [(True, False, False), (True, True, True), (False, False, False)])
def test_upstream_query_has_our_opt_only(client_edns, dnssec_ok, cd):
    client = query("WwW.ExAmple.com.", "AAAA", edns=client_edns, dnssec_ok=dnssec_ok, cd=cd,
                   ecs="192.0.2.0" if client_edns else None, payload=4096)
    sent = decode(upstream_query(0xBEEF, client, 1232))
    assert sent.id == 0xBEEF
    assert sent.flags & dns.flags.RD and not sent.flags & dns.flags.QR
    assert bool(sent.flags & dns.flags.CD) == cd
    assert sent.edns == 0 and sent.payload == 1232
    assert bool(sent.ednsflags & dns.flags.DO) == dnssec_ok
    assert sent.options == ()  # the client's ECS is never forwarded
    assert upstream_query(1, client, 1232)[12:12 + len(client.question)] == client.question


def _matches(reply: bytes, qid: int = 7) -> bool:
    client = query("www.example.com.", "A")
    return reply_matches(reply, qid, client.qname_key, client.qtype, client.qclass)


def _upstream_bytes(name="www.example.com.", rdtype="A", qid=7) -> bytes:
    return upstream_query(qid, query(name, rdtype), 1232)


MATCH_CASES = [
    # (reply, matches)
    (reply_to(_upstream_bytes()), True),
    (reply_to(_upstream_bytes("WWW.EXAMPLE.COM.")), True),  # the name compares case-insensitively
    (reply_to(_upstream_bytes(), qid=8), False),
    (_upstream_bytes(), False),  # QR clear: a query, not a reply
    (reply_to(_upstream_bytes("www.example.org.")), False),
    (reply_to(_upstream_bytes("ww.example.com.")), False),
    (reply_to(_upstream_bytes(rdtype="AAAA")), False),
    (reply_to(_upstream_bytes())[:20], False),  # cut inside the question
    (reply_to(_upstream_bytes())[:4] + b"\x00\x00" + reply_to(_upstream_bytes())[6:], False),  # QDCOUNT 0
    (bytes([0, 7, 0x80 | 0x28]) + reply_to(_upstream_bytes())[3:], False),  # opcode UPDATE
]


@pytest.mark.parametrize("reply, matches", MATCH_CASES)
def test_reply_matches(reply, matches):
    assert _matches(reply) == matches


def test_reply_with_the_class_changed_does_not_match():
    reply = bytearray(reply_to(_upstream_bytes()))
    struct.pack_into("!H", reply, 12 + len(WWW) + 2, 3)  # class CH
    assert not _matches(bytes(reply))


# ---------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------

def _clean(*records, qname="www.example.com.", rdtype="A", **options) -> Cleaned:
    return clean_reply(reply_to(upstream_query(1, query(qname, rdtype), 1232), *records, **options),
                       dns.rdatatype.from_text(rdtype), in_zone)


def _as_client_reply(cleaned: Cleaned, qname="www.example.com.", rdtype="A") -> dns.message.Message:
    client = query(qname, rdtype)
    records = cleaned.message[12 + cleaned.question_length:]
    return decode(client_reply(client, cleaned.rcode, records, cleaned.ancount, cleaned.nscount, 1232, None))


def _texts(section) -> set[str]:
    return {line for rrset in section for line in rrset.to_text().splitlines()}


CLEAN_CASES = [
    # (records, authority, additional, qname, qtype, answer kept, authority kept)
    (["www.example.com. 300 IN A 192.0.2.1", "www.example.com. 300 IN A 192.0.2.2"], [], [],
     "www.example.com.", "A", 2, 0),
    (["www.example.com. 60 IN CNAME web.example.net.", "web.example.net. 30 IN A 192.0.2.9"],
     ["example.net. 100 IN NS ns1.example.net."], ["ns1.example.net. 100 IN A 192.0.2.53"],
     "www.example.com.", "A", 2, 1),
    (["example.com. 300 IN MX 10 mail.example.com.", "example.com. 300 IN MX 20 mail2.example.com."], [], [],
     "example.com.", "MX", 2, 0),
    (["_x._tcp.example.com. 300 IN SRV 1 2 443 host.example.com."], [], [], "_x._tcp.example.com.", "SRV", 1, 0),
    (["example.com. 300 IN SOA ns.example.com. host.example.com. 1 2 3 4 5"], [], [], "example.com.", "SOA", 1, 0),
    (["example.com. 300 IN TXT \"v=spf1 -all\" \"second\""], [], [], "example.com.", "TXT", 1, 0),
    (["4.3.2.1.in-addr.arpa. 300 IN PTR www.example.com."], [], [], "4.3.2.1.in-addr.arpa.", "PTR", 1, 0),
    (["x.example.com. 300 IN NAPTR 100 10 \"S\" \"SIP+D2U\" \"\" _sip._udp.example.com."], [], [],
     "x.example.com.", "NAPTR", 1, 0),
    (["x.example.com. 300 IN RP mbox.example.com. txt.example.com."], [], [], "x.example.com.", "RP", 1, 0),
    (["www.example.com. 300 IN A 192.0.2.1",
      "www.example.com. 300 IN RRSIG A 13 3 300 20300101000000 20200101000000 12345 example.com. "
      "c2lnbmF0dXJlIGJ5dGVzIGhlcmUgYW5kIG1vcmUgYnl0ZXMgdG8gbWFrZSBpdCBsb25nZXI="], [], [],
     "www.example.com.", "A", 2, 0),
    ([], ["example.com. 300 IN SOA ns.example.com. host.example.com. 1 2 3 4 60"], [],
     "nope.example.com.", "A", 0, 1),
]


@pytest.mark.parametrize("records, authority, additional, qname, qtype, kept_answer, kept_authority", CLEAN_CASES)
def test_cleaned_reply_decodes_to_the_same_records(records, authority, additional, qname, qtype,
                                                   kept_answer, kept_authority):
    original = decode(reply_to(upstream_query(1, query(qname, qtype), 1232), *records,
                               authority=tuple(authority), additional=tuple(additional)))
    cleaned = _clean(*records, authority=tuple(authority), additional=tuple(additional), qname=qname, rdtype=qtype)
    assert (cleaned.ancount, cleaned.nscount) == (kept_answer, kept_authority)
    decoded = _as_client_reply(cleaned, qname, qtype)
    assert _texts(decoded.answer) == _texts(original.answer)
    assert _texts(decoded.authority) == _texts(original.authority)
    assert decoded.additional == []  # glue never passes


def test_rrsig_rdata_passes_byte_for_byte():
    sig = ("www.example.com. 300 IN RRSIG A 13 3 300 20300101000000 20200101000000 12345 Example.COM. "
           "c2lnbmF0dXJlIGJ5dGVzIGhlcmUgYW5kIG1vcmUgYnl0ZXMgdG8gbWFrZSBpdCBsb25nZXI=")
    upstream = reply_to(upstream_query(1, query(), 1232), sig)
    cleaned = clean_reply(upstream, 1, in_zone)
    rdata = decode(upstream).answer[0][0].to_wire()
    assert rdata in cleaned.message  # signer name case and all


STRIP_CASES = [
    # (answer, authority, answer kept, authority kept, stripped)
    (["www.example.com. 60 IN CNAME reg.azurecr.test.", "reg.azurecr.test. 60 IN A 6.6.6.6"], [], 1, 0, 1),
    (["www.example.com. 60 IN A 192.0.2.1"], ["azurecr.test. 60 IN NS ns.evil.example."], 1, 0, 1),
    (["www.example.com. 60 IN A 192.0.2.1", "X.AzureCR.Test. 60 IN A 6.6.6.6"], [], 1, 0, 1),  # any case
    (["www.example.com. 60 IN A 192.0.2.1"], ["test. 60 IN NS ns.example."], 1, 1, 0),  # the parent is not ours
    (["www.example.com. 60 IN A 192.0.2.1"], ["xazurecr.test. 60 IN NS ns.example."], 1, 1, 0),  # label boundary
]


@pytest.mark.parametrize("answer, authority, kept_answer, kept_authority, stripped", STRIP_CASES)
def test_records_owned_by_our_zone_are_stripped(answer, authority, kept_answer, kept_authority, stripped):
    cleaned = _clean(*answer, authority=tuple(authority))
    assert (cleaned.ancount, cleaned.nscount, cleaned.stripped) == (kept_answer, kept_authority, stripped)
    decoded = _as_client_reply(cleaned)
    assert not any(rrset.name.is_subdomain(ZONE) for rrset in decoded.answer + decoded.authority)


def test_negative_ttl_is_the_smaller_of_soa_ttl_and_minimum():
    assert _clean(authority=("example.com. 300 IN SOA ns. host. 1 2 3 4 60",), rcode=dns.rcode.NXDOMAIN,
                  qname="nope.example.com.").negative_ttl == 60
    assert _clean(authority=("example.com. 30 IN SOA ns. host. 1 2 3 4 600",),
                  qname="nope.example.com.").negative_ttl == 30


@pytest.mark.parametrize("records, rcode, rdtype, negative", [
    (["www.example.com. 60 IN A 192.0.2.1"], dns.rcode.NOERROR, "A", False),
    ([], dns.rcode.NOERROR, "A", True),  # NODATA
    ([], dns.rcode.NXDOMAIN, "A", True),
    (["www.example.com. 60 IN CNAME gone.example.net."], dns.rcode.NXDOMAIN, "A", True),
    (["www.example.com. 60 IN CNAME there.example.net."], dns.rcode.NOERROR, "A", True),  # NODATA at the end
    (["www.example.com. 60 IN CNAME there.example.net."], dns.rcode.NOERROR, "CNAME", False),
    (["www.example.com. 60 IN TXT hello"], dns.rcode.NOERROR, "ANY", False),
])
def test_negative_answers(records, rcode, rdtype, negative):
    assert _clean(*records, rcode=rcode, rdtype=rdtype).negative == negative


def test_a_ttl_with_the_top_bit_set_means_zero():
    upstream = bytearray(reply_to(upstream_query(1, query(), 1232), "www.example.com. 60 IN A 192.0.2.1"))
    a_record = upstream.index(b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01")
    struct.pack_into("!I", upstream, a_record + 4, 0x80000000)
    assert clean_reply(bytes(upstream), 1, in_zone).ttls == (0,)


def test_extended_rcode_from_the_upstream_opt():
    upstream = bytearray(reply_to(upstream_query(1, query(), 1232)))
    msg = dns.message.from_wire(bytes(upstream))
    msg.use_edns(0)
    msg.set_rcode(16)  # BADVERS: upper bits in the OPT
    assert clean_reply(msg.to_wire(), 1, in_zone).rcode == 16


def test_opt_outside_the_additional_section_is_malformed():
    upstream = bytearray(reply_to(upstream_query(1, query(), 1232), "www.example.com. 60 IN A 192.0.2.1"))
    a_record = upstream.index(b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01")
    struct.pack_into("!H", upstream, a_record, 41)  # its type becomes OPT
    with pytest.raises(MalformedReply, match="OPT"):
        clean_reply(bytes(upstream), 1, in_zone)


@pytest.mark.parametrize("cut", [1, 5, 14, 15])
def test_a_cut_reply_is_malformed(cut):
    upstream = reply_to(upstream_query(1, query(), 1232), "www.example.com. 60 IN CNAME web.example.net.")
    with pytest.raises(MalformedReply):
        clean_reply(upstream[:-cut], 1, in_zone)


def test_names_in_rdata_are_decompressed_for_types_we_must_not_compress():
    # dnspython compresses only what RFC 3597 allows; forge an SRV whose target is a pointer
    asked = query("_x._tcp.example.com.", "SRV", edns=False)
    upstream = reply_to(_no_opt_query(asked), "_x._tcp.example.com. 60 IN SRV 1 2 3 example.com.")
    suffix = b"\x07example\x03com\x00"
    assert upstream.endswith(suffix)  # the target, written in full by dnspython
    forged = bytearray(upstream[:-len(suffix)] + struct.pack("!H", 0xC000 | upstream.index(suffix)))
    struct.pack_into("!H", forged, len(forged) - 10, 8)  # rdlength: 6 fixed bytes + the pointer
    cleaned = clean_reply(bytes(forged), 33, in_zone)
    assert cleaned.message.endswith(suffix)  # we write it in full again: no pointer in SRV rdata
    srv = _as_client_reply(cleaned, "_x._tcp.example.com.", "SRV").answer[0][0]
    assert srv.target.to_text() == "example.com."


def _no_opt_query(asked) -> bytes:
    """Our upstream query without its OPT (so the reply ends with the last answer record)."""
    data = bytearray(upstream_query(1, asked, 1232)[:-11])
    struct.pack_into("!H", data, 10, 0)
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# Client replies
# ---------------------------------------------------------------------------------------------

CLIENT_REPLY_CASES = [
    # (query options, max_udp_size, truncated, has OPT)
    ({}, 1232, False, True),
    ({"edns": False}, 512, False, False),
    ({"dnssec_ok": True, "cd": True}, 1232, False, True),
    ({"rd": False}, 1232, False, True),
    ({"edns": False}, 60, True, False),
    ({}, 70, True, True),
    ({}, None, False, True),  # TCP: no limit
]


@pytest.mark.parametrize("options, max_udp_size, truncated, has_opt", CLIENT_REPLY_CASES)
def test_client_reply_flags_and_size(options, max_udp_size, truncated, has_opt):
    client = query("WWW.example.COM.", "A", **options)
    cleaned = _clean("www.example.com. 60 IN A 192.0.2.1", "www.example.com. 60 IN A 192.0.2.2")
    reply = client_reply(client, 0, cleaned.message[12 + cleaned.question_length:], cleaned.ancount, 0, 1232,
                         max_udp_size)
    msg = decode(reply)
    assert msg.id == client.id
    assert reply[12:12 + len(client.question)] == client.question  # the client's own case
    assert msg.flags & dns.flags.QR and msg.flags & dns.flags.RA
    assert not msg.flags & (dns.flags.AA | dns.flags.AD)
    assert bool(msg.flags & dns.flags.RD) == client.rd
    assert bool(msg.flags & dns.flags.CD) == client.cd
    assert bool(msg.flags & dns.flags.TC) == truncated
    assert len(msg.answer) == (0 if truncated else 1)
    assert (msg.edns == 0) == has_opt
    if has_opt:
        assert msg.payload == 1232 and bool(msg.ednsflags & dns.flags.DO) == options.get("dnssec_ok", False)
    if max_udp_size is not None:
        assert len(reply) <= max(max_udp_size, 12 + len(client.question) + 11)


def test_error_reply():
    client = query("www.example.com.", "A", cd=True)
    msg = decode(error_reply(client, dns.rcode.REFUSED, 1232))
    assert (msg.id, msg.rcode(), msg.answer, msg.edns) == (client.id, dns.rcode.REFUSED, [], 0)
    assert msg.flags & dns.flags.CD and msg.flags & dns.flags.RA


# ---------------------------------------------------------------------------------------------
# Broken upstream bytes never crash the walker
# ---------------------------------------------------------------------------------------------

_GOOD = reply_to(upstream_query(1, query(), 1232), "www.example.com. 60 IN CNAME web.example.net.",
                 "web.example.net. 60 IN A 192.0.2.1", "web.example.net. 60 IN MX 5 mx.example.net.",
                 authority=("example.net. 60 IN SOA ns.example.net. h.example.net. 1 2 3 4 5",),
                 additional=("mx.example.net. 60 IN A 192.0.2.2",))


def _walks_or_refuses(data: bytes) -> None:
    try:
        cleaned = clean_reply(data, 1, in_zone)
    except MalformedReply:
        return
    # what we wrote, our walker reads back the same
    again = clean_reply(cleaned.message, 1, in_zone)
    assert (again.ancount, again.nscount, again.ttls) == (cleaned.ancount, cleaned.nscount, cleaned.ttls)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=12, max_size=300))
def test_random_bytes_never_crash(data):
    _walks_or_refuses(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(12, len(_GOOD)))
def test_mutated_replies_never_crash(changes, length):
    data = bytearray(_GOOD)
    for pos, value in changes:
        data[pos] = value
    _walks_or_refuses(bytes(data[:length]))


def test_the_unmutated_reply_walks():
    cleaned = clean_reply(_GOOD, 1, in_zone)
    assert (cleaned.ancount, cleaned.nscount) == (3, 1)
