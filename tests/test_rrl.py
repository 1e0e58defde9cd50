"""Response rate limiting: the pure limiter as tables (classes, prefixes, buckets over time, slip,
exempt, table bound, the start log, counters), then a real dnsd on loopback: a burst from one /24 is
held to the rate while other /24s asking the same name get every answer, TCP is never limited, and
/metrics counts what was dropped and slipped."""
from __future__ import annotations

import ipaddress
import socket
import time
import urllib.request

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from structlog.testing import capture_logs

from dnsd.config import ConfigError
from dnsd.model import RateLimitSettings
from dnsd.protocol.rrl import EPISODE_GAP, ResponseRateLimiter, slip_reply
from tests import harness
from tests.dnstest import config_from, engine_from, example_dict, isolated_example

ENGINE = engine_from()


def reply_for(qname: str, qtype: str = "A", *, ecs: str | None = None, edns: bool = False,
              raw: bytes | None = None, qid: int = 4660) -> bytes:
    """The example config's real reply (from the engine, as the UDP listener gets it)."""
    if raw is None:
        options = [dns.edns.ECSOption.from_text(ecs)] if ecs else []
        query = dns.message.make_query(qname, qtype, use_edns=0 if (edns or ecs) else None, options=options)
        query.id = qid
        raw = query.to_wire()
    reply = ENGINE.handle(raw, "192.0.2.1", False)
    assert reply is not None
    return reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(**settings) -> tuple[ResponseRateLimiter, Clock]:
    clock = Clock()
    return ResponseRateLimiter(RateLimitSettings(**settings), clock=clock), clock


FORMERR_QUERY = b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07contoso"  # truncated question


@pytest.mark.parametrize("first,second,same_class", [
    (("contoso.azurecr.test", "A"), ("contoso.azurecr.test", "A"), True),
    (("contoso.azurecr.test", "A"), ("CoNtOsO.AzUrEcR.tEsT", "A"), True),       # 0x20 case: same class
    (("contoso.azurecr.test", "A"), ("contoso.azurecr.test", "AAAA"), False),   # qtype
    (("contoso.azurecr.test", "A"), ("contoso.eastus.geo.azurecr.test", "A"), False),  # qname
    (("nx1.azurecr.test", "A"), ("nx2.deeper.azurecr.test", "MX"), True),      # NXDOMAIN: one per zone
    (("nx1.azurecr.test", "A"), ("NX3.AZURECR.TEST", "TXT"), True),
    (("nx1.azurecr.test", "A"), ("contoso.azurecr.test", "A"), False),         # NXDOMAIN vs an answer
    (("www.example.com", "A"), ("mail.example.org", "TXT"), True),             # REFUSED: errors grouped
    (("www.example.com", "A"), ("azurecr.test", "AXFR"), True),
    (("www.example.com", "A"), (FORMERR_QUERY, ""), True),                     # REFUSED and FORMERR
    (("www.example.com", "A"), ("nx1.azurecr.test", "A"), False),              # error vs NXDOMAIN
    (("contoso.azurecr.test", "A"), ("contoso.azurecr.test", "A", "edns"), True),  # EDNS does not matter
    (("contoso.azurecr.test", "A", "ecs"), ("contoso.azurecr.test", "A", "ecs2"), True),  # nor ECS
    (("contoso.tm.azurecr.test", "A", "ecs"), ("contoso.tm.azurecr.test", "A", "ecs2"), True),  # other replica
], ids=lambda c: c if isinstance(c, bool) else " ".join(map(str, c))[:40])
def test_response_classes(first, second, same_class):
    """Rate 1 per second: the second reply is limited exactly when it is in the first one's class."""
    def make(spec):
        if isinstance(spec[0], bytes):
            return reply_for("", raw=spec[0])
        qname, qtype, *extra = spec
        ecs = {"ecs": "203.0.113.0/24", "ecs2": "198.51.100.0/24"}.get(extra[0]) if extra else None
        return reply_for(qname, qtype, ecs=ecs, edns=bool(extra))
    rrl, _ = limiter(responses_per_second=1, slip=0)
    a, b = make(first), make(second)
    assert rrl.filter(a, "192.0.2.1") is a
    assert (rrl.filter(b, "192.0.2.1") is None) == same_class


def nxdomain_with_chain(qname: str, target: str, zone: str = "azurecr.test", compress: bool = True) -> bytes:
    """An NXDOMAIN that first follows a CNAME (as a forwarded answer may), SOA in the authority."""
    import dns.rrset
    reply = dns.message.make_response(dns.message.make_query(qname, "A"))
    reply.set_rcode(dns.rcode.NXDOMAIN)
    reply.answer.append(dns.rrset.from_text(qname + ".", 30, "IN", "CNAME", target + "."))
    reply.authority.append(dns.rrset.from_text(zone + ".", 60, "IN", "SOA", f"ns1.{zone}. h.{zone}. 1 2 3 4 60"))
    if compress:
        return reply.to_wire()
    import struct

    def name(text: str) -> bytes:
        return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".")) + b"\0"
    soa = name(f"ns1.{zone}") + name(f"h.{zone}") + struct.pack("!5I", 1, 2, 3, 4, 60)
    return (struct.pack("!6H", 1, 0x8183, 1, 1, 1, 0) + name(qname) + struct.pack("!2H", 1, 1)
            + name(qname) + struct.pack("!2HIH", 5, 1, 30, len(name(target))) + name(target)
            + name(zone) + struct.pack("!2HIH", 6, 1, 60, len(soa)) + soa)


@pytest.mark.parametrize("a,b,same_class", [
    (nxdomain_with_chain("a.azurecr.test", "gone.azurecr.test"), "nx1.azurecr.test", True),
    (nxdomain_with_chain("a.azurecr.test", "gone.azurecr.test", compress=False), "nx1.azurecr.test", True),
    (nxdomain_with_chain("a.example.org", "gone.example.org", zone="example.org"), "nx1.azurecr.test", False),
    (nxdomain_with_chain("A.EXAMPLE.ORG", "x.example.org", zone="example.org"),
     nxdomain_with_chain("b.example.org", "y.example.org", zone="example.org"), True),
], ids=["compressed", "uncompressed", "other-zone", "same-other-zone"])  # the replies' IDs are random
def test_nxdomain_class_is_the_zone_of_the_soa_whatever_comes_before(a, b, same_class):
    rrl, _ = limiter(responses_per_second=1, slip=0)
    b = reply_for(b) if isinstance(b, str) else b
    assert rrl.filter(a, "192.0.2.1") is a
    assert (rrl.filter(b, "192.0.2.1") is None) == same_class


@pytest.mark.parametrize("settings,client_a,client_b,same_prefix", [
    ({}, "10.1.2.3", "10.1.2.200", True),              # /24
    ({}, "10.1.2.3", "10.1.3.3", False),
    ({"ipv4_prefix_length": 16}, "10.1.2.3", "10.1.3.3", True),
    ({"ipv4_prefix_length": 32}, "10.1.2.3", "10.1.2.4", False),
    ({}, "2001:db8:0:ff::1", "2001:db8:0:0::2", True),    # /56
    ({}, "2001:db8:0:100::1", "2001:db8:0:0::1", False),
    ({"ipv6_prefix_length": 64}, "2001:db8::1", "2001:db8::ffff", True),
    ({}, "::ffff:10.1.2.3", "10.1.2.9", True),          # v4-mapped is the v4 client
    ({"ipv4_prefix_length": 8, "ipv6_prefix_length": 16}, "10.0.0.1", "a00::1", False),  # v4 never meets v6
])
def test_client_prefixes(settings, client_a, client_b, same_prefix):
    rrl, _ = limiter(responses_per_second=1, slip=0, **settings)
    reply = reply_for("contoso.azurecr.test")
    assert rrl.filter(reply, client_a) is reply
    assert (rrl.filter(reply, client_b) is None) == same_prefix


@pytest.mark.parametrize("rate,slip,schedule,expected", [
    # A answered, S slipped (TC=1), D dropped; schedule: seconds since start of each reply
    (2, 0, [0, 0, 0, 0, 0], "AADDD"),
    (2, 1, [0, 0, 0, 0, 0], "AASSS"),
    (2, 2, [0, 0, 0, 0, 0, 0], "AADSDS"),
    (2, 3, [0, 0, 0, 0, 0, 0, 0, 0], "AADDSDDS"),
    (2, 0, [0, 0, 0, 0.5, 0.5, 1.0, 1.0], "AADADAD"),  # 2 per second refill: one every 0.5 s
    (2, 0, [0, 0, 0, 10, 10, 10], "AADAAD"),           # idle: full again, but never more than the rate
    (2, 0, [0, 10, 10, 10, 10], "AAAAD"),              # lazy refill: after a quiet spell up to 2x rate at once
    (2, 0, [0, 10, 10, 10, 10, 10.5, 10.5], "AAAADAD"),
    (8, 0, [i / 32 for i in range(30)], "A" * 10 + "DDADDDADDDADDDADDDAD"),  # 32/s against 8/s: every 4th
])
def test_token_bucket_over_time(rate, slip, schedule, expected):
    rrl, clock = limiter(responses_per_second=rate, slip=slip)
    reply = reply_for("contoso.azurecr.test")
    start = clock.now
    seen = ""
    for at in schedule:
        clock.now = start + at
        out = rrl.filter(reply, "192.0.2.1")
        seen += "A" if out is reply else "D" if out is None else "S"
    assert seen == expected


@pytest.mark.parametrize("settings,qname,expected_rate", [
    ({"responses_per_second": 3}, "contoso.azurecr.test", 3),
    ({"responses_per_second": 3}, "nx1.azurecr.test", 3),            # default: responses_per_second
    ({"responses_per_second": 3, "nxdomains_per_second": 1}, "nx1.azurecr.test", 1),
    ({"responses_per_second": 3, "nxdomains_per_second": 1}, "contoso.azurecr.test", 3),
    ({"responses_per_second": 3, "errors_per_second": 2}, "www.example.com", 2),
])
def test_rate_per_class(settings, qname, expected_rate):
    rrl, _ = limiter(slip=0, **settings)
    reply = reply_for(qname)
    answered = sum(rrl.filter(reply, "192.0.2.1") is not None for _ in range(10))
    assert answered == expected_rate


@pytest.mark.parametrize("qname,qtype", [
    ("contoso.azurecr.test", "A"), ("CoNtOsO.azurecr.test", "AAAA"), ("nx1.azurecr.test", "A"),
    ("www.example.com", "TXT"),
])
def test_slipped_reply_is_the_header_and_question_with_tc(qname, qtype):
    reply = reply_for(qname, qtype, edns=True, qid=777)
    slipped = dns.message.from_wire(slip_reply(reply))
    original = dns.message.from_wire(reply)
    assert slipped.id == 777
    assert slipped.flags & dns.flags.TC
    assert slipped.flags & ~dns.flags.TC == original.flags & ~dns.flags.TC
    assert slipped.rcode() == original.rcode()
    assert slipped.question == original.question and str(slipped.question[0].name) == qname + "."
    assert (slipped.answer, slipped.authority, slipped.additional) == ([], [], [])
    assert len(slip_reply(reply)) == 12 + len(qname) + 2 + 4  # no OPT either


def test_slipped_reply_of_a_reply_without_question():
    reply = reply_for("", raw=b"\x12\x34\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00")  # two questions: FORMERR
    assert slip_reply(reply)[:12] == reply[:2] + bytes((reply[2] | 2, reply[3])) + bytes(8)


@pytest.mark.parametrize("exempt,client,limited", [
    ((), "10.1.2.3", True),
    (("10.1.0.0/16",), "10.1.2.3", False),
    (("10.1.0.0/16",), "10.2.2.3", True),
    (("10.1.2.3/32", "2001:db8::/32"), "2001:db8:1::5", False),
    (("2001:db8::/32",), "10.1.2.3", True),
])
def test_exempt_sources_are_never_limited(exempt, client, limited):
    rrl, _ = limiter(responses_per_second=1, slip=0, exempt=tuple(ipaddress.ip_network(n) for n in exempt))
    reply = reply_for("contoso.azurecr.test")
    results = [rrl.filter(reply, client) for _ in range(5)]
    assert (results.count(None) == 4) == limited
    assert results.count(reply) == (1 if limited else 5)


def test_table_is_bounded_and_forgets_idle_buckets_first():
    rrl, clock = limiter(responses_per_second=1, slip=0, table_size=1000)
    reply = reply_for("contoso.azurecr.test")
    for i in range(999):
        rrl.filter(reply, f"10.{i // 256}.{i % 256}.1")
    clock.now += 1.0
    hot = "192.0.2.1"
    assert rrl.filter(reply, hot) is reply
    assert rrl.filter(reply, hot) is None
    clock.now += 0.5  # the 999 are idle for 1.5 s (full again), the hot bucket only 0.5 s
    rrl.filter(reply, "198.51.100.1")  # table full: cleanup
    assert len(rrl.buckets) == 2
    assert rrl.filter(reply, hot) is None  # still limited: its bucket was kept
    for i in range(20_000):  # a flood of fresh prefixes, all within the same instant
        rrl.filter(reply, f"11.{i // 256 % 256}.{i % 256}.1")
        assert len(rrl.buckets) <= 1000 and len(rrl._front) <= 1000


def test_random_case_finds_the_same_bucket_and_does_not_fill_the_front_cache():
    rrl, _ = limiter(responses_per_second=5, slip=0)
    name = "contoso.azurecr.test"
    spellings = ["".join(c.upper() if (i >> k) & 1 else c for k, c in enumerate(name)) for i in range(40)]
    answered = sum(rrl.filter(reply_for(s), "10.0.0.1") is not None for s in spellings)
    assert answered == 5
    assert len(rrl._front) <= 2 and len(rrl.buckets) == 1


def test_one_log_event_per_limited_prefix_and_episode():
    rrl, clock = limiter(responses_per_second=1, slip=2)
    reply, other = reply_for("contoso.azurecr.test"), reply_for("nx1.azurecr.test")
    with capture_logs() as logs:
        for _ in range(50):
            rrl.filter(reply, "10.9.8.7")
            rrl.filter(other, "10.9.8.1")  # same /24, another class: same episode
        clock.now += 1.0
        for _ in range(50):
            rrl.filter(reply, "10.9.8.7")
        clock.now += EPISODE_GAP + 1  # quiet: the next limit is a new episode
        for _ in range(50):
            rrl.filter(reply, "10.9.8.7")
    events = [e for e in logs if e["event"] == "rate_limited"]
    assert [(e["prefix"], e["response_class"], e["log_level"]) for e in events] == \
        [("10.9.8.0/24", "noerror", "warning")] * 2
    assert rrl.limited_prefixes == 2


def test_start_log_is_itself_rate_limited():
    rrl, clock = limiter(responses_per_second=1, slip=0)
    reply = reply_for("contoso.azurecr.test")
    with capture_logs() as logs:
        for i in range(100):  # 100 prefixes start being limited in the same second
            rrl.filter(reply, f"10.0.{i}.1")
            rrl.filter(reply, f"10.0.{i}.1")
        clock.now += 1.0
        rrl.filter(reply, "10.1.0.1")
        rrl.filter(reply, "10.1.0.1")
    events = [e for e in logs if e["event"] == "rate_limited"]
    assert len(events) == 11
    assert events[-1]["suppressed"] == 90
    assert rrl.limited_prefixes == 101


def test_counters_by_class():
    rrl, _ = limiter(responses_per_second=2, slip=2)
    for qname, n in (("contoso.azurecr.test", 10), ("nx1.azurecr.test", 6), ("www.example.com", 3)):
        reply = reply_for(qname)
        for _ in range(n):
            rrl.filter(reply, "10.0.0.1")
    assert (rrl.dropped, rrl.slipped) == ([4, 2, 1], [4, 2, 0])


@pytest.mark.parametrize("rate_limit,expected", [
    (None, None),  # absent: off
    ({}, RateLimitSettings()),  # present: on, with the model's defaults
    ({"responses_per_second": 5, "slip": 0, "exempt": "10.0.0.0/8"},
     RateLimitSettings(responses_per_second=5, slip=0, exempt=(ipaddress.ip_network("10.0.0.0/8"),))),
    ({"nxdomains_per_second": 2, "errors_per_second": 1, "ipv4_prefix_length": 32, "ipv6_prefix_length": 64,
      "table_size": 5000, "exempt": ["192.0.2.0/24", "2001:db8::/32"]},
     RateLimitSettings(nxdomains_per_second=2, errors_per_second=1, ipv4_prefix_length=32, ipv6_prefix_length=64,
                       table_size=5000, exempt=(ipaddress.ip_network("192.0.2.0/24"),
                                                ipaddress.ip_network("2001:db8::/32")))),
])
def test_config_server_rate_limit(rate_limit, expected):
    data = example_dict()
    if rate_limit is not None:
        data["server"]["rate_limit"] = rate_limit
    assert config_from(data).server.rate_limit == expected


def test_config_rate_limit_must_be_a_mapping():
    data = example_dict()
    data["server"]["rate_limit"] = 20
    with pytest.raises(ConfigError) as caught:
        config_from(data)
    assert "server.rate_limit: expected a mapping, got 20" in caught.value.render()


@pytest.mark.parametrize("before,after,restart", [
    (None, {"responses_per_second": 5}, True),
    ({"responses_per_second": 5}, {"responses_per_second": 6}, True),
    ({"responses_per_second": 5}, {"responses_per_second": 5}, False),
])
async def test_reload_reports_a_rate_limit_change_as_needing_a_restart(tmp_path, before, after, restart):
    """The UDP listeners keep the limiter they started with: a reload says so instead of pretending."""
    import yaml

    from dnsd.serving.service import Dnsd
    path = isolated_example(tmp_path)
    data = yaml.safe_load(path.read_text())
    if before is not None:
        data["server"]["rate_limit"] = before
    path.write_text(yaml.safe_dump(data))
    dnsd = Dnsd(config_from(path.read_text(), str(path)))
    assert (dnsd.rrl is None) == (before is None)
    data["server"]["rate_limit"] = after
    path.write_text(yaml.safe_dump(data))
    result = await dnsd.reload()
    assert result.ok and ("server.rate_limit" in result.needs_restart) == restart


# -- a real dnsd on loopback ------------------------------------------------------------------

RATE = 10
BURST = 100


def udp_load(port: int, plan: list[tuple[str, int]], qname: str = "contoso.azurecr.test"
             ) -> tuple[list[dict[str, int]], float]:
    """Each (source, count) of the plan sends `count` queries for qname A from its own address,
    interleaved and as fast as possible; then replies are collected for 1 s. Per source: how many
    came back whole, slipped (TC, no answer) or not at all; and how long the sending took."""
    socks = []
    try:
        for source, _ in plan:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for every reply
            sock.bind((source, 0))
            sock.setblocking(False)
        query = dns.message.make_query(qname, "A").to_wire()
        started = time.monotonic()
        for i in range(max(count for _, count in plan)):
            for sock, (_, count) in zip(socks, plan):
                if i < count:
                    sock.sendto(query, ("127.0.0.1", port))
        sending = time.monotonic() - started
        results = [{"answered": 0, "slipped": 0, "lost": count} for _, count in plan]
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            got = False
            for sock, result in zip(socks, results):
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                got = True
                reply = dns.message.from_wire(data)
                result["lost"] -= 1
                result["slipped" if reply.flags & dns.flags.TC and not reply.answer else "answered"] += 1
            if not got:
                time.sleep(0.005)
        return results, sending
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture(scope="module")
def limited_dnsd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rrl")
    config = isolated_example(tmp, server={"rate_limit": {"responses_per_second": RATE, "slip": 2,
                                                          "exempt": ["127.0.9.0/24"]}})
    with harness.dnsd(config) as proc:
        yield proc


def _net(source: str) -> str:
    return str(ipaddress.ip_network(f"{source}/24", strict=False))


@pytest.mark.parametrize("plan", [
    # (source, queries), all sent at once: the first bursts, the others ask the same name; each case
    # sends for about 1 s: same-prefix in the fast suite, the others slow
    pytest.param([("127.0.1.5", BURST), ("127.0.2.5", RATE - 1), ("127.0.3.5", RATE - 1)],
                 id="other-prefixes", marks=pytest.mark.slow),
    pytest.param([("127.0.4.5", BURST), ("127.0.4.77", 5), ("127.0.6.1", RATE)],  # .77: the burst's /24 and bucket
                 id="same-prefix"),
    pytest.param([("127.0.9.5", BURST), ("127.0.9.6", BURST)],  # exempt network: never limited
                 id="exempt", marks=pytest.mark.slow),
])
def test_burst_from_one_prefix_is_limited_others_answered(limited_dnsd, plan):
    results, sending = udp_load(limited_dnsd.port, plan)
    burst_net = _net(plan[0][0])
    if burst_net == "127.0.9.0/24":
        assert results == [{"answered": count, "slipped": 0, "lost": 0} for _, count in plan]
        return
    answered = sum(r["answered"] for (s, _), r in zip(plan, results) if _net(s) == burst_net)
    slipped = sum(r["slipped"] for (s, _), r in zip(plan, results) if _net(s) == burst_net)
    sent = sum(count for s, count in plan if _net(s) == burst_net)
    # a second's worth at once, plus the refill while the queries arrived; every other limited slips
    assert RATE <= answered <= RATE * (1 + sending + 0.2) + 1, results
    assert abs(slipped - (sent - answered) / 2) <= 1, results
    for (source, count), result in zip(plan, results):
        if _net(source) != burst_net:
            assert result == {"answered": count, "slipped": 0, "lost": 0}, (source, result)


def test_tcp_is_never_limited_and_metrics_count(limited_dnsd):
    port = limited_dnsd.port
    udp_load(port, [("127.0.5.5", BURST)])
    query = dns.message.make_query("contoso.azurecr.test", "A")
    for _ in range(3 * RATE):  # the same name from the same (limited) source, over TCP
        reply = dns.query.tcp(query, "127.0.0.1", port=port, source="127.0.5.5", timeout=2)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    request = urllib.request.Request(f"http://127.0.0.1:{limited_dnsd.admin_port}/metrics",
                                     headers={"Authorization": "Bearer test-admin-token"})  # RRL figures are not public
    text = urllib.request.urlopen(request, timeout=5).read().decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("geotm_rrl_")}
    assert values['geotm_rrl_dropped_total{response_class="noerror"}'] >= BURST / 2 - RATE
    assert values['geotm_rrl_slipped_total{response_class="noerror"}'] >= BURST / 2 - RATE
    assert values["geotm_rrl_limited_prefixes_total"] >= 1
    assert limited_dnsd.wait_for_log('"prefix": "127.0.5.0/24"')
    starts = [line for line in limited_dnsd.log_lines() if '"prefix": "127.0.5.0/24"' in line]
    assert len(starts) == 1 and '"event": "rate_limited"' in starts[0]  # one event, not one per query


@pytest.mark.slow
def test_amplification_script_against_the_limited_dnsd(limited_dnsd):
    """bench/attacks/amplification.py, bounded and on loopback: with RRL the flood gets back fewer
    bytes than it sent (without it, the script shows x4.76)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(harness.REPO_ROOT / "bench" / "attacks" / "amplification.py"),
                          "--port", str(limited_dnsd.port), "--seconds", "1", "--rate", "2000"],
                         capture_output=True, text=True, timeout=60, cwd=harness.REPO_ROOT)
    assert out.returncode == 0, out.stderr
    amplification = float(out.stdout.rsplit("amplification x", 1)[1].split()[0])
    whole = int(out.stdout.split("whole answers ")[1].split()[0])
    assert amplification < 1.0 and whole <= 2 * RATE + 2, out.stdout


@pytest.mark.parametrize("rate_limit,admin_port", [(None, None), ({"responses_per_second": 1_000_000}, None),
                                                   ({"responses_per_second": 20, "slip": 2}, 8999)])
def test_bench_rrl_configs_are_valid(tmp_path, rate_limit, admin_port):
    """bench/rrl.py's three dnsd configs: the bench copy of the example plus rate_limit (and metrics)."""
    import sys
    sys.path.insert(0, str(harness.REPO_ROOT / "bench"))
    import peerconfig
    import rrl as bench_rrl
    text = bench_rrl.dnsd_config(peerconfig.geotm_bench_document(harness.REPO_ROOT / "config" / "example.yaml",
                                                                 tmp_path, 5399), rate_limit, admin_port)
    config = config_from(text)
    expected = None if rate_limit is None else RateLimitSettings(**rate_limit)
    assert config.server.rate_limit == expected
    assert config.admin.listen == (("127.0.0.1", admin_port) if admin_port else None)

