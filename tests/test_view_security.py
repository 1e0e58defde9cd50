"""Private endpoints stay private: a view is chosen by the packet's source address, and EDNS Client
Subnet may choose it only from a resolver the view lists in `trusted_resolvers` (issue 9, item 1).
A property test over any outside source, ECS, name, type and transport; the attack script
(bench/attacks/ecs_private_leak.py) against a real dnsd; dig and `dnsd explain` on the same rule."""
from __future__ import annotations

import ipaddress
import subprocess
import sys

import dns.message
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import harness
from tests.dnstest import EXAMPLE, ROOT, engine_from, isolated_example, make_query
from tests.test_integration import answer_lines, dig

ENGINE = engine_from()
CONFIG = ENGINE.snapshot.config
PRIVATE = {str(ip) for view in CONFIG.views for endpoints in view.endpoints.values()
           for ips in (endpoints.global_addresses, *endpoints.data.values(), *endpoints.regional.values())
           for ip in ips}
INSIDE = [net for view in CONFIG.views for net in (*view.sources, *view.trusted_resolvers)]
ZD = ENGINE.snapshot.compiled.zd
NAMES = sorted(ZD.all_names() | ZD.empty_non_terminals)


def outside(address) -> bool:
    return not any(address.version == net.version and address in net for net in INSIDE)


sources = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(outside)
# ECS aimed into the VNet (an address of a view's network, a prefix at least as long) as often as
# anywhere at all: a forged ECS is the attack
vnet_ecs = st.sampled_from(INSIDE).flatmap(lambda net: st.tuples(
    st.integers(int(net.network_address), int(net.broadcast_address)), st.integers(net.prefixlen, net.max_prefixlen),
    st.just(net.version)))
any_ecs = st.one_of(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.just(4)),
                    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128), st.just(6)))
ecs_subnets = st.one_of(st.none(), vnet_ecs, any_ecs).map(
    lambda t: None if t is None else ipaddress.ip_network(
        (ipaddress.IPv4Address(t[0]) if t[2] == 4 else ipaddress.IPv6Address(t[0]), t[1]), strict=False))
# names a view answers differently (where private addresses live) as often as any name
VIEW_NAMES = sorted(set().union(*ZD.overrides) | {"contoso.azurecr.test"})
names = st.one_of(st.sampled_from(VIEW_NAMES), st.sampled_from(NAMES),
                  st.tuples(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), st.sampled_from(NAMES)).map(
                      lambda t: f"{t[0]}.{t[1]}"))
qtypes = st.one_of(st.sampled_from(["A", "AAAA", "ANY", "CNAME", "TXT", "SOA", "NS", "HTTPS"]),
                   st.integers(1, 65535).filter(lambda t: t not in (41, 249, 250)).map(int))


def private_addresses_in(reply: dns.message.Message) -> set[str]:
    return {rdata.address for section in (reply.answer, reply.authority, reply.additional) for rrset in section
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rdata in rrset} & PRIVATE


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=sources, ecs=ecs_subnets, name=names, qtype=qtypes, tcp=st.booleans(),
       mixed_case=st.booleans())
def test_no_source_outside_every_view_ever_gets_a_private_address(source, ecs, name, qtype, tcp, mixed_case):
    if mixed_case:
        name = "".join(c.upper() if i % 2 else c for i, c in enumerate(name))
    query = make_query(name, qtype if isinstance(qtype, str) else dns.rdatatype.to_text(qtype),
                       ecs=str(ecs) if ecs is not None else None)
    reply = ENGINE.handle(query.to_wire(), str(source), tcp)
    assert reply is not None
    assert private_addresses_in(dns.message.from_wire(reply)) == set()


def test_the_property_can_fail():
    """The same check sees the private addresses where they belong: a VNet source, and a VNet
    subnet in ECS from the view's trusted resolver."""
    for client, ecs in (("127.0.0.70", None), ("127.0.0.53", "10.1.9.0/24")):
        reply = ENGINE.handle(make_query("contoso.azurecr.test", ecs=ecs).to_wire(), client, False)
        assert private_addresses_in(dns.message.from_wire(reply)) == {"10.1.0.4"}
    assert len(PRIVATE) == 7


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with harness.dnsd(isolated_example(tmp_path_factory.mktemp("views"))) as process:
        yield process


ATTACKS = [
    # (case, extra arguments, exit status, what the script prints)
    ("public client over UDP", [], 0, "leaked: none"),
    ("public client over TCP", ["--tcp"], 0, "leaked: none"),
    ("VNet-looking loopback address outside the view", ["--source", "127.0.0.128"], 0, "leaked: none"),
    ("the view's trusted resolver (allowed to choose the view)", ["--source", "127.0.0.53"], 1,
     "leaked: 7 private addresses: 10.1.0.4, 10.1.0.5, 10.1.0.6, 10.1.0.7, 10.1.0.8, 10.1.0.9, 10.1.0.10"),
]


@pytest.mark.slow  # test_attack_scripts runs the same script against a real dnsd in the fast suite
@pytest.mark.parametrize("args,status,expected", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_ecs_attack_script_against_a_real_dnsd(server, args, status, expected):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "attacks" / "ecs_private_leak.py"),
                             "--port", str(server.port), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == status, result.stdout + result.stderr
    assert expected in result.stdout


DIG_VIEWS = [
    ("forged VNet ECS from a public source", ["+subnet=10.1.2.0/24"], "127.0.0.11"),
    ("VNet ECS from the trusted resolver", ["-b", "127.0.0.53", "+subnet=10.1.2.0/24"], "10.1.0.4"),
    ("public ECS from the trusted resolver", ["-b", "127.0.0.53", "+subnet=198.51.100.0/24"], "127.0.0.12"),
    ("trusted resolver without ECS: its own (public) source", ["-b", "127.0.0.53"], "127.0.0.11"),
    ("VNet source with a public ECS: VNet view", ["-b", "127.0.0.70", "+subnet=198.51.100.0/24"], "10.1.0.4"),
]


@pytest.mark.parametrize("args,address", [c[1:] for c in DIG_VIEWS], ids=[c[0] for c in DIG_VIEWS])
@pytest.mark.parametrize("transport", [[], ["+tcp"]], ids=["udp", "tcp"])
def test_dig_view_by_source_and_trusted_ecs(server, transport, args, address):
    lines = answer_lines(dig(server, *transport, *args, "contoso.azurecr.test"))
    assert lines[-1].split()[-1] == address


EXPLAIN = [
    ("127.0.0.1", "10.1.2.0/24", "view: public",
     "why: source address 127.0.0.1 is in no view; ECS 10.1.2.0/24 is ignored for the view: "
     "127.0.0.1 is no view's trusted resolver"),
    ("127.0.0.53", "10.1.2.0/24", "view: corp-vnet",
     "why: ECS 10.1.2.0/24 from 127.0.0.53, a trusted resolver of this view"),
    ("127.0.0.53", "198.51.100.0/24", "view: public",
     "why: ECS 198.51.100.0/24 from trusted resolver 127.0.0.53 is in no view that trusts it"),
    ("127.0.0.70", None, "view: corp-vnet", "why: source address 127.0.0.70 is in its sources"),
]


@pytest.mark.parametrize("client,ecs,view,why", EXPLAIN)
def test_explain_states_the_same_view_rule(client, ecs, view, why):
    args = [sys.executable, "-m", "dnsd", "explain", "contoso.azurecr.test", "--config", str(EXAMPLE),
            "--client", client] + (["--ecs", ecs] if ecs else [])
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert view in lines and why in lines
