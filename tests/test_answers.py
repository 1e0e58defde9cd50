"""What dnsd answers for the example config, as zone-file tables (the shape of CoreDNS's test.Case)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.dnstest import ask, engine_from, lines_of, rcode_text, render_section

PUBLIC_CHAIN_HEAD = """
    contoso.azurecr.test.             300 IN CNAME contoso.privatelink.azurecr.test.
    contoso.privatelink.azurecr.test. 300 IN CNAME contoso.tm.azurecr.test.
"""
SOA_NEGATIVE = "azurecr.test. 60 IN SOA ns1.azurecr.test. hostmaster.azurecr.test. {serial} 3600 600 604800 60"


@dataclass
class Case:
    id: str
    name: str
    qtype: str = "A"
    client: str = "127.0.0.5"  # in 127.0.0.0/26: the eastus client network, public view
    ecs: str | None = None
    rcode: str = "NOERROR"
    answer: str = ""
    authority: str = ""
    additional: str = ""


CASES = [
    Case("global, public client in eastus: whole chain to the nearest replica", "contoso.azurecr.test",
         answer=PUBLIC_CHAIN_HEAD + """
         contoso.tm.azurecr.test.              30 IN CNAME contoso.eastus.reg.azurecr.test.
         contoso.eastus.reg.azurecr.test.      10 IN A     127.0.0.11"""),
    Case("global, ECS client in westeurope", "contoso.azurecr.test", ecs="198.51.100.0/24",
         answer=PUBLIC_CHAIN_HEAD + """
         contoso.tm.azurecr.test.              30 IN CNAME contoso.westeurope.reg.azurecr.test.
         contoso.westeurope.reg.azurecr.test.  10 IN A     127.0.0.12"""),
    Case("global, source address in southeastasia", "contoso.azurecr.test", client="203.0.113.9",
         answer=PUBLIC_CHAIN_HEAD + """
         contoso.tm.azurecr.test.              30 IN CNAME contoso.southeastasia.reg.azurecr.test.
         contoso.southeastasia.reg.azurecr.test. 10 IN A   127.0.0.13"""),
    Case("global, IPv6 ECS in westeurope", "contoso.azurecr.test", ecs="2001:db8:100::/48",
         answer=PUBLIC_CHAIN_HEAD + """
         contoso.tm.azurecr.test.              30 IN CNAME contoso.westeurope.reg.azurecr.test.
         contoso.westeurope.reg.azurecr.test.  10 IN A     127.0.0.12"""),
    Case("global, client in no network: default region eastus", "contoso.azurecr.test", client="192.0.2.1",
         answer=PUBLIC_CHAIN_HEAD + """
         contoso.tm.azurecr.test.              30 IN CNAME contoso.eastus.reg.azurecr.test.
         contoso.eastus.reg.azurecr.test.      10 IN A     127.0.0.11"""),
    Case("global, VNet client by source: private IP at the privatelink hop", "contoso.azurecr.test",
         client="127.0.0.70", answer="""
         contoso.azurecr.test.             300 IN CNAME contoso.privatelink.azurecr.test.
         contoso.privatelink.azurecr.test.  10 IN A     10.1.0.4"""),
    Case("global, VNet client by ECS from the view's trusted resolver", "contoso.azurecr.test",
         client="127.0.0.53", ecs="10.1.7.0/24", answer="""
         contoso.azurecr.test.             300 IN CNAME contoso.privatelink.azurecr.test.
         contoso.privatelink.azurecr.test.  10 IN A     10.1.0.4"""),
    Case("forged VNet ECS from anyone else: public chain", "contoso.azurecr.test", client="192.0.2.1",
         ecs="10.1.7.0/24", answer=PUBLIC_CHAIN_HEAD + """
         contoso.tm.azurecr.test.              30 IN CNAME contoso.eastus.reg.azurecr.test.
         contoso.eastus.reg.azurecr.test.      10 IN A     127.0.0.11"""),
    Case("trusted resolver, ECS outside the VNet: public chain in the ECS region", "contoso.azurecr.test",
         client="127.0.0.53", ecs="198.51.100.0/24", answer=PUBLIC_CHAIN_HEAD + """
         contoso.tm.azurecr.test.              30 IN CNAME contoso.westeurope.reg.azurecr.test.
         contoso.westeurope.reg.azurecr.test.  10 IN A     127.0.0.12"""),
    Case("VNet source address with a public ECS: still the VNet view", "contoso.azurecr.test",
         client="127.0.0.70", ecs="198.51.100.0/24", answer="""
         contoso.azurecr.test.             300 IN CNAME contoso.privatelink.azurecr.test.
         contoso.privatelink.azurecr.test.  10 IN A     10.1.0.4"""),
    Case("ECS /8 does not reveal enough to match the /16 VNet", "contoso.azurecr.test", client="127.0.0.53",
         ecs="10.0.0.0/8", answer=PUBLIC_CHAIN_HEAD + """
         contoso.tm.azurecr.test.              30 IN CNAME contoso.eastus.reg.azurecr.test.
         contoso.eastus.reg.azurecr.test.      10 IN A     127.0.0.11"""),
    Case("regional, public: always that replica", "contoso.westeurope.geo.azurecr.test", answer="""
         contoso.westeurope.geo.azurecr.test. 300 IN CNAME contoso.westeurope.reg.azurecr.test.
         contoso.westeurope.reg.azurecr.test.  10 IN A     127.0.0.12"""),
    Case("regional, VNet: private regional IP", "contoso.eastus.geo.azurecr.test", client="127.0.0.70",
         answer="""
         contoso.eastus.geo.azurecr.test. 300 IN CNAME contoso.eastus.geo.privatelink.azurecr.test.
         contoso.eastus.geo.privatelink.azurecr.test. 10 IN A 10.1.0.8"""),
    Case("data, public", "contoso.southeastasia.data.azurecr.test", answer="""
         contoso.southeastasia.data.azurecr.test. 300 IN CNAME contoso.southeastasia.reg.azurecr.test.
         contoso.southeastasia.reg.azurecr.test.   10 IN A     127.0.0.13"""),
    Case("data, VNet: private data IP", "contoso.westeurope.data.azurecr.test", client="127.0.0.100",
         answer="""
         contoso.westeurope.data.azurecr.test. 300 IN CNAME contoso.westeurope.data.privatelink.azurecr.test.
         contoso.westeurope.data.privatelink.azurecr.test. 10 IN A 10.1.0.6"""),
    Case("private regional name asked publicly: the public replica", "contoso.eastus.geo.privatelink.azurecr.test",
         answer="""
         contoso.eastus.geo.privatelink.azurecr.test. 300 IN CNAME contoso.eastus.reg.azurecr.test.
         contoso.eastus.reg.azurecr.test. 10 IN A 127.0.0.11"""),
    Case("replica host", "contoso.eastus.reg.azurecr.test",
         answer="contoso.eastus.reg.azurecr.test. 10 IN A 127.0.0.11"),
    Case("traffic-manager name asked directly", "contoso.tm.azurecr.test", ecs="203.0.113.0/24", answer="""
         contoso.tm.azurecr.test.              30 IN CNAME contoso.southeastasia.reg.azurecr.test.
         contoso.southeastasia.reg.azurecr.test. 10 IN A   127.0.0.13"""),
    Case("AAAA: chain, then NODATA at the replica host", "contoso.azurecr.test", "AAAA",
         answer=PUBLIC_CHAIN_HEAD + "contoso.tm.azurecr.test. 30 IN CNAME contoso.eastus.reg.azurecr.test.",
         authority=SOA_NEGATIVE),
    Case("TXT at the global name: chain, then NODATA", "contoso.azurecr.test", "TXT",
         answer=PUBLIC_CHAIN_HEAD + "contoso.tm.azurecr.test. 30 IN CNAME contoso.eastus.reg.azurecr.test.",
         authority=SOA_NEGATIVE),
    Case("CNAME asked: only the first hop", "contoso.azurecr.test", "CNAME",
         answer="contoso.azurecr.test. 300 IN CNAME contoso.privatelink.azurecr.test."),
    Case("ANY at a CNAME: the CNAME (RFC 8482)", "contoso.azurecr.test", "ANY",
         answer="contoso.azurecr.test. 300 IN CNAME contoso.privatelink.azurecr.test."),
    Case("ANY at the apex: one RRset, not all (RFC 8482)", "azurecr.test", "ANY",
         answer="azurecr.test. 3600 IN NS ns1.azurecr.test.",
         additional="ns1.azurecr.test. 3600 IN A 127.0.0.1"),
    Case("no such name: NXDOMAIN with SOA", "nothing.azurecr.test", rcode="NXDOMAIN", authority=SOA_NEGATIVE),
    Case("unknown replica's regional name: NXDOMAIN", "contoso.northpole.geo.azurecr.test", rcode="NXDOMAIN",
         authority=SOA_NEGATIVE),
    Case("name below an existing name: NXDOMAIN", "x.contoso.azurecr.test", rcode="NXDOMAIN",
         authority=SOA_NEGATIVE),
    Case("empty non-terminal: NODATA, not NXDOMAIN (RFC 8020)", "eastus.geo.azurecr.test",
         authority=SOA_NEGATIVE),
    Case("empty non-terminal AAAA", "privatelink.azurecr.test", "AAAA", authority=SOA_NEGATIVE),
    Case("outside our zone: REFUSED", "example.com", rcode="REFUSED"),
    Case("suffix that is not a label boundary: REFUSED", "notazurecr.test", rcode="REFUSED"),
    Case("apex SOA", "azurecr.test", "SOA",
         answer="azurecr.test. 3600 IN SOA ns1.azurecr.test. hostmaster.azurecr.test. {serial} 3600 600 604800 60"),
    Case("apex NS with glue", "azurecr.test", "NS", answer="azurecr.test. 3600 IN NS ns1.azurecr.test.",
         additional="ns1.azurecr.test. 3600 IN A 127.0.0.1"),
    Case("apex A: NODATA", "azurecr.test", "A", authority=SOA_NEGATIVE),
    Case("static CAA", "azurecr.test", "CAA", answer='azurecr.test. 3600 IN CAA 0 issue "letsencrypt.org"'),
    Case("static MX", "azurecr.test", "MX", answer="azurecr.test. 3600 IN MX 10 mail.example.net."),
    Case("static TXT (validation token)", "_acme-challenge.contoso.azurecr.test", "TXT",
         answer='_acme-challenge.contoso.azurecr.test. 300 IN TXT "Xq3ZrM1d0H9Yx0m6lQ2b8f4N7tK5pW3cE1vR9sA2uJk"'),
    Case("nameserver address", "ns1.azurecr.test", answer="ns1.azurecr.test. 3600 IN A 127.0.0.1"),
    Case("uncompiled type at a static name: NODATA", "ns1.azurecr.test", "SRV", authority=SOA_NEGATIVE),
]


@pytest.fixture(scope="module")
def engine():
    return engine_from()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_answer(engine, case: Case):
    serial = engine.snapshot.config.zone.soa.serial
    reply = ask(engine, case.name, case.qtype, client=case.client, ecs=case.ecs)
    assert rcode_text(reply) == case.rcode
    assert render_section(reply.answer) == lines_of(case.answer.format(serial=serial))
    assert render_section(reply.authority) == lines_of(case.authority.format(serial=serial))
    assert render_section(reply.additional) == lines_of(case.additional.format(serial=serial))
    refused = case.rcode == "REFUSED"
    assert bool(reply.flags & 0x0400) is not refused  # AA on every answer from our zone


def test_public_clients_never_see_a_private_address(engine):
    """Over every name the zone has and every common type, from public sources and public ECS."""
    private = {str(ip) for view in engine.snapshot.config.views for endpoints in view.endpoints.values()
               for ips in [endpoints.global_addresses, *endpoints.data.values(), *endpoints.regional.values()]
               for ip in ips}
    zd = engine.snapshot.compiled.zd
    names = sorted(zd.all_names() | zd.empty_non_terminals)
    assert len(names) > 20
    for name in names:
        for qtype in ("A", "AAAA", "ANY", "CNAME", "TXT"):
            for client, ecs in (("127.0.0.5", None), ("192.0.2.1", None), ("127.0.0.53", "198.51.100.0/24"),
                                ("192.0.2.1", "10.1.7.0/24"), ("127.0.0.5", "127.0.0.64/26")):
                reply = ask(engine, name, qtype, client=client, ecs=ecs)
                seen = {rdata.to_text() for rrset in reply.answer for rdata in rrset}
                assert not seen & private, (name, qtype, client, ecs)


def test_vnet_client_gets_one_plus_two_n_private_addresses(engine):
    names = ["contoso.azurecr.test"] + [f"contoso.{rep}.{kind}.azurecr.test"
                                         for rep in ("eastus", "westeurope", "southeastasia")
                                         for kind in ("geo", "data")]
    seen = set()
    for name in names:
        reply = ask(engine, name, client="127.0.0.70")
        seen.update(rdata.address for rrset in reply.answer if rrset.rdtype == 1 for rdata in rrset)
    assert seen == {f"10.1.0.{i}" for i in range(4, 11)}
