"""Forwarding end to end: a real dnsd process with a forward section, its upstream a real Knot (knotd)
serving example.net, or a scripted hostile upstream (forwardkit.UpstreamThread) whose query log shows
what dnsd asked. Clients are real sockets on loopback, a second source address (127.0.0.2) standing
for a host outside forward.clients; the operator side is the real `dnsd` command line."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from tests import harness
from tests.dnstest import ROOT, isolated_example
from tests.forwardkit import UpstreamThread, answering, knot_config, reply_to, silent, unbound_config
from tests.tools import require_tool

TOKEN = "test-admin-token"  # isolated_example's
ALLOWED, STRANGER = "127.0.0.1", "127.0.0.2"  # forward.clients is 127.0.0.1/32 below
FORWARD = {"clients": ["127.0.0.1/32"], "try_timeout": "300ms", "deadline": "1500ms"}


def write_config(tmp_path, forward: dict | None, **server) -> tuple:
    """The example config under tmp_path, its admin API on a port of its own (the CLI finds it there),
    with this forward section (None: none) and server settings. -> (path, admin port)."""
    admin_port = harness.free_port()
    data = yaml.safe_load(isolated_example(tmp_path).read_text())
    data["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    if forward is not None:
        data["forward"] = forward
    data["server"] = {**data["server"], **server}
    path = tmp_path / "geotm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, admin_port


def ask(proc, name: str, rdtype: str = "A", source: str = ALLOWED, tcp: bool = False,
        timeout: float = 3.0) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)  # RD set, as stubs send it
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, "127.0.0.1", port=proc.port, timeout=timeout, source=source)


def flags(message: dns.message.Message) -> tuple[bool, bool]:
    """(AA, RA)"""
    return bool(message.flags & dns.flags.AA), bool(message.flags & dns.flags.RA)


def records(message: dns.message.Message) -> list[str]:
    return sorted(f"{rrset.name} {rrset.rdtype.name} {rd}" for rrset in message.answer for rd in rrset)


def dnsd_cli(path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnsd", *args, "--config", str(path)], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)


def metrics(admin_port: int, token: str | None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


# -- a real Knot upstream -----------------------------------------------------------------------------

EXAMPLE_NET = """\
$ORIGIN example.net.
$TTL 300
@ 3600 IN SOA ns1.example.net. hostmaster.example.net. 1 7200 900 1209600 120
@ IN NS ns1.example.net.
ns1 IN A 127.0.0.1
www IN A 192.0.2.10
www IN A 192.0.2.11
tcp IN A 192.0.2.20
short 30 IN A 192.0.2.30
"""


def _knot_config(base, port: int) -> str:
    return knot_config(base, port, ("example.net",))


@pytest.fixture(scope="module")
def knot(tmp_path_factory):
    knotd = require_tool("knotd", "as the real upstream of the forwarding tests", package="knot")
    base = tmp_path_factory.mktemp("knot")
    for sub in ("run", "db"):
        (base / sub).mkdir()
    (base / "example.net.zone").write_text(EXAMPLE_NET)
    port = harness.free_port()
    (base / "knot.conf").write_text(_knot_config(base, port))
    with harness.ServiceProcess([knotd, "-c", str(base / "knot.conf")], name="knotd", timeout=20,
                                ready=lambda: harness.udp_answers("127.0.0.1", port, "www.example.net.", "A")) as proc:
        proc.port = port
        yield proc


@pytest.fixture(scope="module")
def knot_dnsd(knot, tmp_path_factory):
    path, admin_port = write_config(tmp_path_factory.mktemp("knot-dnsd"),
                                    {**FORWARD, "upstreams": [f"127.0.0.1:{knot.port}"]})
    with harness.dnsd(path, admin_port=admin_port) as proc:
        proc.config = path
        yield proc


@pytest.mark.parametrize("name, tcp", [("www.example.net.", False), ("tcp.example.net.", True)],
                         ids=["udp", "tcp"])
def test_an_allowed_client_gets_knots_answer_with_ra_and_no_aa(knot, knot_dnsd, name, tcp):
    direct = dns.query.tcp(dns.message.make_query(name, "A"), "127.0.0.1", port=knot.port, timeout=2)
    assert direct.flags & dns.flags.AA  # Knot is the authority; we are not
    reply = ask(knot_dnsd, name, tcp=tcp)  # a miss: the reply comes later, on UDP or TCP
    assert reply.rcode() == dns.rcode.NOERROR
    assert flags(reply) == (False, True)
    assert records(reply) == records(direct)
    assert records(ask(knot_dnsd, name, tcp=tcp)) == records(direct)  # and from the cache


RA_CASES = [
    # (source, name, rcode, AA, RA): RA only for clients allowed to recurse, for our names too
    (ALLOWED, "www.example.net.", "NOERROR", False, True),
    (STRANGER, "www.example.net.", "REFUSED", False, False),  # exactly as without forwarding
    (ALLOWED, "contoso.azurecr.test.", "NOERROR", True, True),
    (STRANGER, "contoso.azurecr.test.", "NOERROR", True, False),
    (ALLOWED, "nope.azurecr.test.", "NXDOMAIN", True, True),  # ours: never forwarded
]


@pytest.mark.parametrize("source, name, rcode, aa, ra", RA_CASES)
def test_who_gets_recursion(knot_dnsd, source, name, rcode, aa, ra):
    reply = ask(knot_dnsd, name, source=source)
    assert (dns.rcode.to_text(reply.rcode()), *flags(reply)) == (rcode, aa, ra)


@pytest.mark.parametrize("source, warned", [(ALLOWED, False), (STRANGER, True)])
def test_dig_warns_only_a_client_that_may_not_recurse(knot_dnsd, source, warned):
    dig = require_tool("dig", "to ask as users do", package="dnsutils")
    out = subprocess.run([dig, "@127.0.0.1", "-p", str(knot_dnsd.port), "-b", source, "+time=2", "+tries=1",
                          "contoso.azurecr.test"], capture_output=True, text=True, timeout=10).stdout
    assert ("recursion requested but not available" in out) == warned, out


def test_the_second_answer_comes_from_the_cache_with_a_lower_ttl(knot_dnsd):
    first = ask(knot_dnsd, "short.example.net.")
    assert first.answer[0].ttl <= 30
    later: list[int] = []

    def counted_down() -> bool:
        later.append(ask(knot_dnsd, "short.example.net.").answer[0].ttl)
        return later[-1] < first.answer[0].ttl

    harness.wait_until(counted_down, timeout=3, what="the cached TTL counting down", interval=0.2)
    assert all(ttl <= first.answer[0].ttl for ttl in later)  # Knot itself always says 30


def test_explain_an_outside_name(knot, knot_dnsd):
    ask(knot_dnsd, "www.example.net.")
    upstream = f"127.0.0.1:{knot.port}"
    live = dnsd_cli(knot_dnsd.config, "explain", "--live", "www.example.net")
    assert live.returncode == 0, live.stderr
    assert f"forwarding: forwarded to {upstream}, cached for " in live.stdout
    assert "answer: the upstream's (RA set, AA clear" in live.stdout
    stranger = dnsd_cli(knot_dnsd.config, "explain", "--live", "www.example.net", "--client", STRANGER)
    assert f"refused for this client: {STRANGER} is not in forward.clients (127.0.0.1/32)" in stranger.stdout
    assert "answer: REFUSED" in stranger.stdout
    offline = dnsd_cli(knot_dnsd.config, "explain", "uncached.example.net")
    assert f"forwarding: would be used: forwarded to {upstream} (in config order" in offline.stdout
    never = dnsd_cli(knot_dnsd.config, "explain", "--live", "never-asked.example.net")
    assert f"forwarded to {upstream}, not cached: the next query goes upstream" in never.stdout


FORWARD_FAMILIES = ("geotm_forward_queries_total", "geotm_forward_cache_hits_total", "geotm_forward_cache_misses_total",
                    "geotm_forward_stale_served_total", "geotm_forward_coalesced_total", "geotm_forward_cache_entries",
                    "geotm_forward_cache_bytes", "geotm_forward_upstream_queries_total",
                    "geotm_forward_upstream_errors_total", "geotm_forward_upstream_seconds_bucket",
                    "geotm_forward_upstream_srtt_seconds", 'geotm_queries_total{kind="forwarded"')


def test_forward_metrics_need_the_token(knot_dnsd):
    ask(knot_dnsd, "metrics.example.net.")
    ask(knot_dnsd, "metrics.example.net.")  # from the cache, whichever tests ran before in this process
    detailed = metrics(knot_dnsd.admin_port, TOKEN)
    public = metrics(knot_dnsd.admin_port, None)
    for family in FORWARD_FAMILIES:
        assert family in detailed, family
    assert "geotm_forward" not in public and "geotm_replica_status" in public
    hits = [line for line in detailed.splitlines() if line.startswith("geotm_forward_cache_hits_total ")]
    assert float(hits[0].split()[1]) >= 1


def admin_get(admin_port: int, path: str, token: str | None = TOKEN) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def test_status_shows_forwarding_its_upstream_and_cache(knot, knot_dnsd):
    """/v1/status, the status page and `dnsd status` say what forwarding did; the public page does not."""
    before = json.loads(admin_get(knot_dnsd.admin_port, "/v1/status"))["forwarding"]
    for _ in range(3):
        ask(knot_dnsd, "status.example.net.")  # NXDOMAIN from Knot: one lookup, then the cache
    forwarding = json.loads(admin_get(knot_dnsd.admin_port, "/v1/status"))["forwarding"]
    assert forwarding["clients"] == ["127.0.0.1/32"]
    assert forwarding["queries"] - before["queries"] == 3
    assert forwarding["cache_hits"] - before["cache_hits"] == 2
    assert forwarding["cache_misses"] - before["cache_misses"] == 1
    [upstream] = forwarding["upstreams"]
    assert upstream["address"] == f"127.0.0.1:{knot.port}" and upstream["srtt_ms"] > 0
    assert upstream["answers"] - ([u["answers"] for u in before["upstreams"]] or [0])[0] == 1
    assert forwarding["cache"]["entries"] >= 1
    page = admin_get(knot_dnsd.admin_port, "/details")
    assert "Forwarding" in page and f"127.0.0.1:{knot.port}" in page
    public = admin_get(knot_dnsd.admin_port, "/", token=None)
    assert "Forwarding" not in public and str(knot.port) not in public
    printed = dnsd_cli(knot_dnsd.config, "status")
    assert printed.returncode == 0, printed.stderr
    assert "forwarding: " in printed.stdout and f"upstream 127.0.0.1:{knot.port}: srtt" in printed.stdout


# -- a scripted hostile upstream ----------------------------------------------------------------------

BIG = tuple(f"big.example. 300 IN A 192.0.2.{n}" for n in range(1, 41))  # > 512 bytes: TC over UDP


async def hostile(data: bytes, over_tcp: bool):
    """Per name: truncated over UDP, forged replies before the real one, a CNAME into our zone with
    its target's address (poison), or a plain answer."""
    name = dns.message.from_wire(data).question[0].name.to_text().lower()
    if name.startswith("big."):
        return [(reply_to(data, *BIG, tc=not over_tcp), "same")]
    if name.startswith("forged."):
        real = reply_to(data, f"{name} 300 IN A 192.0.2.1")
        qid = int.from_bytes(data[:2], "big")
        return [(reply_to(data, f"{name} 300 IN A 6.6.6.6", qid=qid ^ 0x0101), "same"),  # wrong ID
                (reply_to(data, "other.example. 300 IN A 6.6.6.6", question=("other.example.", "A")), "same"),
                (reply_to(data, f"{name} 300 IN A 6.6.6.6"), "other"),  # from another port
                (real, "same")]
    if name.startswith("into-zone."):
        return [(reply_to(data, f"{name} 300 IN CNAME reg.azurecr.test.", "reg.azurecr.test. 300 IN A 6.6.6.6"),
                 "same")]
    if dns.message.from_wire(data).question[0].rdtype == dns.rdatatype.AAAA:
        return [(reply_to(data, f"{name} 300 IN AAAA 2001:db8::1"), "same")]
    return [(reply_to(data, f"{name} 300 IN A 192.0.2.1"), "same")]


@pytest.fixture(scope="module")
def hostile_dnsd(tmp_path_factory):
    with UpstreamThread(hostile) as upstream:
        path, admin_port = write_config(tmp_path_factory.mktemp("hostile"),
                                        {**FORWARD, "upstreams": [f"127.0.0.1:{upstream.port}"]})
        with harness.dnsd(path, admin_port=admin_port) as proc:
            proc.config, proc.upstream = path, upstream
            yield proc


def test_a_truncated_upstream_answer_is_fetched_over_tcp(hostile_dnsd):
    reply = ask(hostile_dnsd, "big.example.")
    assert len(reply.answer[0]) == len(BIG)
    asked = [over_tcp for data, over_tcp in hostile_dnsd.upstream.received
             if dns.message.from_wire(data).question[0].name.to_text() == "big.example."]
    assert asked == [False, True]


def test_forged_replies_are_ignored(hostile_dnsd):
    reply = ask(hostile_dnsd, "forged.example.")
    assert records(reply) == ["forged.example. A 192.0.2.1"]


def test_names_of_our_zone_never_reach_the_upstream(hostile_dnsd):
    for name, rdtype in (("contoso.azurecr.test.", "A"), ("ns1.azurecr.test.", "AAAA"), ("nope.azurecr.test.", "A"),
                         ("AzureCR.Test.", "SOA"), ("x.y.contoso.azurecr.test.", "TXT")):
        assert flags(ask(hostile_dnsd, name, rdtype)) == (True, True)  # answered by us, the authority
    into = ask(hostile_dnsd, "into-zone.example.")
    assert records(into) == ["into-zone.example. CNAME reg.azurecr.test."]  # the poisoned A is dropped
    assert not [name for name in hostile_dnsd.upstream.questions() if name.endswith("azurecr.test.")]
    assert "into-zone.example." in hostile_dnsd.upstream.questions()  # the log holds what was asked


def test_dnsd_flush_empties_the_entry(hostile_dnsd):
    upstream = hostile_dnsd.upstream

    def asked() -> int:
        return upstream.questions().count("flushme.example.")

    ask(hostile_dnsd, "flushme.example.")
    ask(hostile_dnsd, "flushme.example.", "AAAA")
    ask(hostile_dnsd, "flushme.example.")
    assert asked() == 2  # A and AAAA once each; the second A from the cache
    flushed = dnsd_cli(hostile_dnsd.config, "flush", "FlushMe.example")
    assert (flushed.returncode, flushed.stdout) == (0, "flushed 2 cached answers of FlushMe.example\n"), flushed.stderr
    ask(hostile_dnsd, "flushme.example.")
    assert asked() == 3
    ask(hostile_dnsd, "flushother.example.")  # two entries at least, whichever tests ran before in this process
    everything = dnsd_cli(hostile_dnsd.config, "flush", "--all")
    assert everything.returncode == 0 and everything.stdout.endswith("cached answers (the whole cache)\n")
    ask(hostile_dnsd, "flushme.example.")
    assert asked() == 4
    audit = dnsd_cli(hostile_dnsd.config, "audit")
    assert "flush FlushMe.example (2 entries)" in audit.stdout


def test_flush_refused_without_forwarding(tmp_path):
    path, admin_port = write_config(tmp_path, None)
    with harness.dnsd(path, admin_port=admin_port):
        refused = dnsd_cli(path, "flush", "docker.io")
    assert refused.returncode == 1
    assert "refused (HTTP 409): forwarding is off (the config has no forward section)" in refused.stderr


def test_a_silent_upstream_fails_over_to_the_next(tmp_path):
    with UpstreamThread(silent) as first, UpstreamThread(answering("www.example.com. 300 IN A 192.0.2.2")) as second:
        path, admin_port = write_config(tmp_path, {**FORWARD, "upstreams": [f"127.0.0.1:{first.port}",
                                                                            f"127.0.0.1:{second.port}"]})
        with harness.dnsd(path, admin_port=admin_port) as proc:
            started = time.monotonic()
            reply = ask(proc, "www.example.com.")
            elapsed = time.monotonic() - started
    assert records(reply) == ["www.example.com. A 192.0.2.2"]
    assert first.questions() == ["www.example.com."] and second.questions() == ["www.example.com."]
    assert 0.3 <= elapsed < 1.5  # one try_timeout on the silent one, then the answer


@pytest.mark.parametrize("serve_stale, after_expiry", [(None, "SERVFAIL"), ("1h", "stale")])
def test_upstream_stopped(tmp_path, serve_stale, after_expiry):
    """The cached answer is served while fresh, then SERVFAIL, or a stale answer (TTL 30) when enabled."""
    forward = {**FORWARD, "try_timeout": "200ms", "deadline": "400ms"}
    if serve_stale:
        forward["cache"] = {"serve_stale": serve_stale}
    with UpstreamThread(answering("brief.example. 1 IN A 192.0.2.9")) as upstream:
        path, admin_port = write_config(tmp_path, {**forward, "upstreams": [f"127.0.0.1:{upstream.port}"]})
        with harness.dnsd(path, admin_port=admin_port) as proc:
            assert records(ask(proc, "brief.example.")) == ["brief.example. A 192.0.2.9"]
            upstream.stop()
            cached = ask(proc, "brief.example.")
            assert cached.rcode() == dns.rcode.NOERROR and cached.answer[0].ttl <= 1
            replies: list[dns.message.Message] = []

            def expired() -> bool:
                replies.append(ask(proc, "brief.example."))
                return replies[-1].rcode() != dns.rcode.NOERROR or replies[-1].answer[0].ttl == 30

            harness.wait_until(expired, timeout=3, what="the cached answer expiring", interval=0.1)
    last = replies[-1]
    if after_expiry == "SERVFAIL":
        assert last.rcode() == dns.rcode.SERVFAIL and flags(last) == (False, True)
    else:
        assert records(last) == ["brief.example. A 192.0.2.9"] and last.answer[0].ttl == 30
    assert upstream.questions() == ["brief.example."]


def test_rate_limiting_applies_to_forwarded_answers(tmp_path):
    """Answers that come later (clients waiting on one slow upstream lookup) pass the rate limiter like
    any other: 20 identical UDP questions at once, 2 per second allowed, no slip: a few replies. Over
    TCP (never limited) every one is answered."""
    with UpstreamThread(answering("slow.example. 300 IN A 192.0.2.5", delay=0.2)) as upstream:
        path, admin_port = write_config(tmp_path, {**FORWARD, "upstreams": [f"127.0.0.1:{upstream.port}"]},
                                        rate_limit={"responses_per_second": 2, "slip": 0})
        with harness.dnsd(path, admin_port=admin_port) as proc:
            replies = asyncio.run(_many_at_once(proc.port, "slow.example.", 20))
            assert upstream.questions() == ["slow.example."]  # one lookup: the other 19 joined it
            tcp = [ask(proc, "slow.example.", tcp=True) for _ in range(5)]
            limited = metrics(admin_port, TOKEN)
    assert 1 <= len(replies) <= 4
    assert all(records(m) == ["slow.example. A 192.0.2.5"] for m in replies + tcp)
    assert 'geotm_rrl_dropped_total{response_class="noerror"}' in limited


async def _many_at_once(port: int, name: str, count: int, wait: float = 0.7) -> list[dns.message.Message]:
    """`count` UDP queries sent together from one socket; the replies that arrive within `wait`."""
    loop = asyncio.get_running_loop()
    replies: list[dns.message.Message] = []

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            replies.append(dns.message.from_wire(data))

    transport, _ = await loop.create_datagram_endpoint(Client, local_addr=(ALLOWED, 0),
                                                       remote_addr=("127.0.0.1", port))
    try:
        for qid in range(count):
            query = dns.message.make_query(name, "A")
            query.id = qid
            transport.sendto(query.to_wire())
        await asyncio.sleep(wait)  # the lookup takes 0.2 s
    finally:
        transport.close()
    return replies


# -- reload ------------------------------------------------------------------------------------------

def test_reload_turns_forwarding_on_and_off(tmp_path):
    with UpstreamThread(answering("www.example.com. 300 IN A 192.0.2.1")) as upstream:
        forward = {**FORWARD, "upstreams": [f"127.0.0.1:{upstream.port}"]}
        path, admin_port = write_config(tmp_path, None)
        data = yaml.safe_load(path.read_text())

        def reload_with(section: dict | None) -> subprocess.CompletedProcess:
            changed = dict(data, forward=section) if section is not None else data
            path.write_text(yaml.safe_dump(changed, sort_keys=False))
            return dnsd_cli(path, "reload")

        with harness.dnsd(path, admin_port=admin_port) as proc:
            assert ask(proc, "www.example.com.").rcode() == dns.rcode.REFUSED
            assert flags(ask(proc, "contoso.azurecr.test.")) == (True, False)
            on = reload_with(forward)
            assert on.returncode == 0 and "forwarding on" in on.stdout, on.stderr
            assert records(ask(proc, "www.example.com.")) == ["www.example.com. A 192.0.2.1"]
            assert flags(ask(proc, "contoso.azurecr.test.")) == (True, True)
            bad = reload_with({**forward, "clients": ["0.0.0.0/0"]})
            assert bad.returncode == 1
            assert f"{path}:" in bad.stderr and "0.0.0.0/0 is every address: geotm would be an open resolver" in bad.stderr
            assert records(ask(proc, "www.example.com.")) == ["www.example.com. A 192.0.2.1"]  # the old one serves
            off = reload_with(None)
            assert off.returncode == 0 and "forwarding off" in off.stdout, off.stderr
            assert ask(proc, "www.example.com.").rcode() == dns.rcode.REFUSED
            assert flags(ask(proc, "contoso.azurecr.test.")) == (True, False)
    assert upstream.questions() == ["www.example.com."]  # the second answer came from the cache



# -- behind an existing recursive resolver (the README's second way) ----------------------------------

def _unbound_config(base, port: int, dnsd_port: int) -> str:
    """The README's stub-zone and ECS settings; ECS of whole addresses (the example view's sources are a
    /26), sent from 127.0.0.53, the example view's trusted resolver."""
    return unbound_config(base, port, 'local-zone: "test." nodefault', 'domain-insecure: "azurecr.test"',
                          'module-config: "subnetcache iterator"', "send-client-subnet: 127.0.0.1",
                          "max-client-subnet-ipv4: 32", "client-subnet-always-forward: no",
                          "outgoing-interface: 127.0.0.53", stubs=(("azurecr.test", dnsd_port),))


def test_behind_unbound_with_ecs_each_client_gets_its_view(tmp_path):
    program = require_tool("unbound", "as the recursive resolver in front of geotm")
    path, admin_port = write_config(tmp_path, None)
    with harness.dnsd(path, admin_port=admin_port) as proc:
        port = harness.free_port()
        (tmp_path / "unbound.conf").write_text(_unbound_config(tmp_path, port, proc.port))
        with harness.ServiceProcess([program, "-d", "-c", str(tmp_path / "unbound.conf")], name="unbound", timeout=20,
                                    ready=lambda: harness.udp_answers("127.0.0.1", port, "ns1.azurecr.test.", "A")):
            def via_unbound(source: str) -> list[str]:
                query = dns.message.make_query("contoso.azurecr.test.", "A")
                reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=3, source=source)
                return [rd.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]

            assert via_unbound("127.0.0.70") == ["10.1.0.4"]  # inside corp-vnet's sources: its private IP
            assert via_unbound("127.0.0.1") == ["127.0.0.11"]  # a public client: the public chain


# -- workers ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_flush_reaches_every_worker(tmp_path):
    """`serve --workers 2`: each worker caches on its own; a flush through worker 0's admin API reaches
    the other through the workers' state dir. Each upstream answer carries a new address, so an
    answer from before the flush is told apart from one looked up after it."""
    lookups = iter(range(1, 255))

    async def numbered(data: bytes, over_tcp: bool):
        return [(reply_to(data, f"counted.example. 300 IN A 192.0.2.{next(lookups)}"), "same")]

    def answers(port: int) -> set[str]:  # from 40 source ports: SO_REUSEPORT spreads them over both
        return {records(dns.query.udp(dns.message.make_query("counted.example.", "A"), "127.0.0.1", port=port,
                                      timeout=3))[0] for _ in range(40)}

    with UpstreamThread(numbered) as upstream:
        path, admin_port = write_config(tmp_path, {**FORWARD, "upstreams": [f"127.0.0.1:{upstream.port}"]})
        with harness.dnsd(path, admin_port=admin_port, extra_args=["--workers", "2"]) as supervisor:
            harness.wait_until(lambda: supervisor.log_text().count('"dnsd_started"') == 2, 10, "both workers started")
            before = answers(supervisor.port)
            assert len(before) == 2  # one lookup per worker
            flushed = dnsd_cli(path, "flush", "counted.example")
            assert flushed.returncode == 0, flushed.stderr
            harness.wait_until(lambda: not answers(supervisor.port) & before, 5, "every worker flushed", interval=0.3)
