"""The Forwarder with real upstreams on loopback: Knot DNS (knotd) serving a DNSSEC-signed example.net and
a `test.` zone that holds names of our own zone (azurecr.test), and unbound, a recursive resolver, in
front of that Knot. What the forwarder answers must be what they answer (dnspython asks them directly
for comparison), minus AA and what it must strip, with DNSSEC records byte for byte when DO is set,
and the same again from the cache."""
from __future__ import annotations


import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dnsd.forward import Forwarder
from dnsd.protocol import wire
from tests.forwardkit import CLIENT, Clock, decode, in_zone, knot_config, settings, unbound_config
from tests.harness import ServiceProcess, free_port
from tests.tools import require_tool

EXAMPLE_NET = """\
$ORIGIN example.net.
$TTL 300
@ 3600 IN SOA ns1.example.net. hostmaster.example.net. 1 7200 900 1209600 120
@ IN NS ns1.example.net.
ns1 IN A 127.0.0.1
www IN A 192.0.2.10
www IN A 192.0.2.11
www IN AAAA 2001:db8::10
alias 60 IN CNAME www.example.net.
@ IN MX 10 mail.example.net.
mail IN A 192.0.2.25
_svc._tcp IN SRV 1 5 443 www.example.net.
*.wild IN A 192.0.2.99
""" + "".join(f'big IN TXT "{n:02d}{"x" * 198}"\n' for n in range(8))  # > 1232 bytes: TC, then TCP

TEST_ZONE = """\
$ORIGIN test.
$TTL 300
@ IN SOA ns1.example.net. hostmaster.example.net. 1 7200 900 1209600 120
@ IN NS ns1.example.net.
into-zone IN CNAME reg.azurecr.test.
reg.azurecr IN A 6.6.6.6
"""


def _knot_config(base, port: int) -> str:
    return knot_config(base, port, ("example.net", "test"), signed=("example.net",))


def _signed_and_serving(port: int) -> bool:
    reply = dns.query.udp(dns.message.make_query("www.example.net.", "A", want_dnssec=True), "127.0.0.1",
                          port=port, timeout=0.5)
    return any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in reply.answer)


@pytest.fixture(scope="module")
def knot(tmp_path_factory):
    knotd = require_tool("knotd", "as the real upstream of the forwarding tests", package="knot")
    base = tmp_path_factory.mktemp("knot")
    for sub in ("run", "db", "keys"):
        (base / sub).mkdir()
    (base / "example.net.zone").write_text(EXAMPLE_NET)
    (base / "test.zone").write_text(TEST_ZONE)
    port = free_port()
    (base / "knot.conf").write_text(_knot_config(base, port))
    with ServiceProcess([knotd, "-c", str(base / "knot.conf")], ready=lambda: _signed_and_serving(port),
                        name="knotd", timeout=20) as proc:
        proc.port = port
        yield proc


def _direct(port: int, name: str, rdtype: str, dnssec_ok: bool) -> dns.message.Message:
    """Knot's own answer, over TCP so nothing is cut."""
    return dns.query.tcp(dns.message.make_query(name, rdtype, want_dnssec=dnssec_ok), "127.0.0.1", port=port,
                         timeout=2)


def _query(name: str, rdtype: str, dnssec_ok: bool, qid: int = 77) -> wire.Query:
    msg = dns.message.make_query(name, rdtype, want_dnssec=dnssec_ok, use_edns=0)
    msg.id = qid
    return wire.parse_query(msg.to_wire())


def _lines(section) -> list[str]:
    return sorted(line for rrset in section for line in rrset.to_text().splitlines())


CASES = [
    # (name, type, DO, rcode)
    ("www.example.net.", "A", False, dns.rcode.NOERROR),
    ("www.example.net.", "A", True, dns.rcode.NOERROR),
    ("WwW.ExAmPlE.NeT.", "AAAA", True, dns.rcode.NOERROR),
    ("alias.example.net.", "A", False, dns.rcode.NOERROR),
    ("alias.example.net.", "A", True, dns.rcode.NOERROR),
    ("example.net.", "MX", False, dns.rcode.NOERROR),
    ("_svc._tcp.example.net.", "SRV", True, dns.rcode.NOERROR),
    ("anything.wild.example.net.", "A", True, dns.rcode.NOERROR),
    ("example.net.", "DNSKEY", True, dns.rcode.NOERROR),
    ("missing.example.net.", "A", False, dns.rcode.NXDOMAIN),
    ("missing.example.net.", "A", True, dns.rcode.NXDOMAIN),
    ("www.example.net.", "TXT", True, dns.rcode.NOERROR),  # NODATA
    ("big.example.net.", "TXT", True, dns.rcode.NOERROR),  # truncated over UDP: TCP
]


@pytest.mark.parametrize("name, rdtype, dnssec_ok, rcode", CASES)
async def test_forwarded_answers_are_knots_answers(knot, name, rdtype, dnssec_ok, rcode):
    clock = Clock()
    fwd = Forwarder(settings(knot.port), in_zone, clock=clock)
    direct = _direct(knot.port, name, rdtype, dnssec_ok)
    first = decode(await fwd.resolve(_query(name, rdtype, dnssec_ok), CLIENT, None))
    clock.now += 10
    cached = decode(await fwd.resolve(_query(name, rdtype, dnssec_ok, qid=78), CLIENT, None))

    assert direct.rcode() == first.rcode() == cached.rcode() == rcode
    assert first.question[0].name.to_text() == name  # the client's own case
    assert first.flags & dns.flags.RA and not first.flags & (dns.flags.AA | dns.flags.AD)
    assert _lines(first.answer) == _lines(direct.answer)
    assert _lines(first.authority) == _lines(direct.authority)
    assert first.additional == []
    has_signatures = any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in first.answer + first.authority)
    assert has_signatures == dnssec_ok
    assert (fwd.stats.cache_hits, fwd.stats.lookups) == (1, 1)
    for before, after in zip(first.answer + first.authority, cached.answer + cached.authority):
        assert after.ttl == before.ttl - 10
    assert fwd.upstreams.all[0].stats.errors["truncated"] == (1 if name.startswith("big.") else 0)


async def test_signatures_pass_byte_for_byte(knot):
    fwd = Forwarder(settings(knot.port), in_zone)
    reply = decode(await fwd.resolve(_query("www.example.net.", "A", True), CLIENT, None))
    direct = _direct(knot.port, "www.example.net.", "A", True)
    ours = {rd.to_wire() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.RRSIG for rd in rrset}
    knots = {rd.to_wire() for rrset in direct.answer if rrset.rdtype == dns.rdatatype.RRSIG for rd in rrset}
    assert ours == knots and ours


async def test_negative_answer_lives_by_the_soa(knot):
    clock = Clock()
    fwd = Forwarder(settings(knot.port), in_zone, clock=clock)
    await fwd.resolve(_query("missing.example.net.", "A", False), CLIENT, None)
    # SOA TTL 3600, MINIMUM 120: RFC 2308 says 120
    assert fwd.describe("missing.example.net", 1).ttl_left == 120
    clock.now += 120
    assert fwd.describe("missing.example.net", 1).cached is False


async def test_names_of_our_zone_in_knots_answer_are_dropped(knot):
    fwd = Forwarder(settings(knot.port), in_zone)
    direct = _direct(knot.port, "into-zone.test.", "A", False)
    assert "reg.azurecr.test. 300 IN A 6.6.6.6" in _lines(direct.answer)  # Knot follows the CNAME itself
    reply = decode(await fwd.resolve(_query("into-zone.test.", "A", False), CLIENT, None))
    assert _lines(reply.answer) == ["into-zone.test. 300 IN CNAME reg.azurecr.test."]
    assert fwd.stats.stripped == 1


async def test_knot_refuses_what_it_does_not_serve_and_we_say_servfail(knot):
    fwd = Forwarder(settings(knot.port), in_zone)
    reply = decode(await fwd.resolve(_query("www.example.org.", "A", False), CLIENT, None))
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert fwd.upstreams.all[0].stats.errors["refused"] == 1


# -- unbound in front of Knot: the kind of upstream geotm forwards to in production ------------------

def _unbound_config(base, port: int, knot_port: int) -> str:
    return unbound_config(base, port, 'module-config: "iterator"', 'local-zone: "test." nodefault',
                          stubs=(("example.net", knot_port), ("test", knot_port)))


@pytest.fixture(scope="module")
def unbound(knot, tmp_path_factory):
    program = require_tool("unbound", "as a real recursive upstream of the forwarding tests")
    base = tmp_path_factory.mktemp("unbound")
    port = free_port()
    (base / "unbound.conf").write_text(_unbound_config(base, port, knot.port))
    with ServiceProcess([program, "-d", "-c", str(base / "unbound.conf")],
                        ready=lambda: _signed_and_serving(port), name="unbound", timeout=20) as proc:
        proc.port = port
        yield proc


UNBOUND_CASES = [
    # (name, type, DO, rcode)
    ("www.example.net.", "A", True, dns.rcode.NOERROR),
    ("alias.example.net.", "A", False, dns.rcode.NOERROR),
    ("missing.example.net.", "A", True, dns.rcode.NXDOMAIN),
    ("big.example.net.", "TXT", False, dns.rcode.NOERROR),
]


@pytest.mark.parametrize("name, rdtype, dnssec_ok, rcode", UNBOUND_CASES)
async def test_through_unbound(unbound, name, rdtype, dnssec_ok, rcode):
    fwd = Forwarder(settings(unbound.port), in_zone)
    reply = decode(await fwd.resolve(_query(name, rdtype, dnssec_ok), CLIENT, None))
    direct = _direct(unbound.port, name, rdtype, dnssec_ok)
    assert reply.rcode() == direct.rcode() == rcode
    # unbound counts its TTLs down too: compare the records, not the seconds
    assert _records(reply.answer) == _records(direct.answer)
    assert _records(reply.authority) == _records(direct.authority)
    assert any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in reply.answer + reply.authority) == dnssec_ok


async def test_names_of_our_zone_from_unbound_are_dropped(unbound):
    fwd = Forwarder(settings(unbound.port), in_zone)
    assert "reg.azurecr.test." in {rrset.name.to_text() for rrset in
                                  _direct(unbound.port, "into-zone.test.", "A", False).answer}
    reply = decode(await fwd.resolve(_query("into-zone.test.", "A", False), CLIENT, None))
    assert [rrset.name.to_text() for rrset in reply.answer] == ["into-zone.test."]


def _records(section) -> set[tuple]:
    return {(rrset.name, rrset.rdtype, rd.to_wire()) for rrset in section for rd in rrset}
