"""The Forwarder against scripted upstreams on loopback (tests.forwardkit.FakeUpstream): forged replies
(wrong ID, wrong question, wrong port) are ignored, failures fail over, TC=1 goes to TCP, all-fail
gives SERVFAIL or a stale answer, concurrent misses share one upstream query, TTLs count down, negative
answers are cached by their SOA, our zone is never forwarded nor accepted from upstream, only allowed
clients are served, and everything stays bounded."""
from __future__ import annotations

import asyncio
import ipaddress
import time

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
import uvloop

from dnsd.forward import Forwarder
from dnsd.forward import forwarder as forwarder_module
from dnsd.protocol import wire
from tests.forwardkit import (
    CLIENT,
    Clock,
    FakeUpstream,
    answering,
    decode,
    in_zone,
    query,
    reply_to,
    settings,
    silent,
)
from tests.harness import free_port

A_300 = "www.example.com. 300 IN A 192.0.2.1"
SOA = "example.com. 300 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60"


async def ask(fwd: Forwarder, q: wire.Query | None = None, client: str = CLIENT, tcp: bool = False):
    q = q or query()
    reply = await fwd.resolve(q, client, None if tcp else wire.udp_limit(q, 1232))
    return decode(reply)


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset if rrset.rdtype == 1)


async def test_answers_and_caches():
    async with FakeUpstream(answering(A_300)) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        first = await ask(fwd, query("WwW.ExAmPlE.cOm.", qid=11))
        second = await ask(fwd, query("www.example.com.", qid=12))
    assert (first.id, second.id) == (11, 12)
    assert first.question[0].name.to_text() == "WwW.ExAmPlE.cOm."  # the client's case comes back
    assert addresses(first) == addresses(second) == ["192.0.2.1"]
    assert first.flags & dns.flags.RA and not first.flags & dns.flags.AA
    assert up.udp_queries == 1
    assert (fwd.stats.cache_misses, fwd.stats.cache_hits, fwd.stats.lookups) == (1, 1, 1)
    assert fwd.upstreams.all[0].stats.answers == 1 and fwd.upstreams.all[0].srtt > 0


def forged_first(forgery):
    """A handler that sends forgery(query) first and the genuine answer after it."""

    async def handler(data: bytes, over_tcp: bool):
        return [forgery(data), (reply_to(data, A_300), "same")]

    return handler


FORGERY_CASES = [
    # (what the forger sends before the genuine reply, counted as mismatched)
    ("wrong ID", lambda data: (reply_to(data, "www.example.com. 300 IN A 6.6.6.6",
                                        qid=dns.message.from_wire(data).id ^ 1), "same"), 1),
    ("wrong name", lambda data: (reply_to(data, "www.example.org. 300 IN A 6.6.6.6",
                                          question=("www.example.org.", "A")), "same"), 1),
    ("wrong type", lambda data: (reply_to(data, "www.example.com. 300 IN AAAA ::6",
                                          question=("www.example.com.", "AAAA")), "same"), 1),
    ("not a reply", lambda data: (data, "same"), 1),
    ("garbage", lambda data: (b"\x00" * 5, "same"), 1),
    # the connected socket drops it in the kernel: nothing to count, and it never wins
    ("wrong port", lambda data: (reply_to(data, "www.example.com. 300 IN A 6.6.6.6"), "other"), 0),
]


@pytest.mark.parametrize("what, forgery, mismatched", FORGERY_CASES, ids=[c[0] for c in FORGERY_CASES])
async def test_forged_replies_are_ignored(what, forgery, mismatched):
    async with FakeUpstream(forged_first(forgery)) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        msg = await ask(fwd)
    assert addresses(msg) == ["192.0.2.1"]
    assert fwd.upstreams.all[0].stats.errors["mismatched"] == mismatched


async def test_each_upstream_query_has_a_fresh_id_and_source_port():
    seen = []

    async def handler(data: bytes, over_tcp: bool):
        return [(reply_to(data, "www.example.com. 0 IN A 192.0.2.1"), "same")]  # TTL 0: never cached

    async with FakeUpstream(handler) as up:
        original = up.answer_udp

        async def spy(transport, data, addr):
            seen.append((dns.message.from_wire(data).id, addr[1]))
            await original(transport, data, addr)

        up.answer_udp = spy
        fwd = Forwarder(settings(up.port), in_zone)
        for _ in range(8):
            await ask(fwd, query(qid=1))
    ids, ports = zip(*seen)
    assert len(set(ids)) >= 7 and len(set(ports)) >= 7  # 16-bit randoms: a repeat is possible, not likely


def rcode_reply(rcode: int):
    async def handler(data: bytes, over_tcp: bool):
        return [(reply_to(data, rcode=rcode), "same")]

    return handler


async def garbage_after_the_question(data: bytes, over_tcp: bool):
    reply = bytearray(reply_to(data, A_300))
    reply[7] = 9  # ANCOUNT 9: the records run out
    return [(bytes(reply), "same")]


FAILOVER_CASES = [
    # (first upstream's behaviour, its error kind, penalised)
    (silent, "timeout", True),
    (rcode_reply(dns.rcode.SERVFAIL), "servfail", False),
    (rcode_reply(dns.rcode.REFUSED), "refused", True),
    (rcode_reply(dns.rcode.FORMERR), "formerr", True),
    (rcode_reply(dns.rcode.NOTIMP), "notimp", True),
    (rcode_reply(dns.rcode.YXDOMAIN), "other_rcode", True),
    (garbage_after_the_question, "malformed", True),
]


@pytest.mark.parametrize("behaviour, kind, penalised", FAILOVER_CASES, ids=[c[1] for c in FAILOVER_CASES])
async def test_failover_to_the_next_upstream(behaviour, kind, penalised):
    async with FakeUpstream(behaviour) as bad, FakeUpstream(answering(A_300)) as good:
        fwd = Forwarder(settings(bad.port, good.port), in_zone)
        msg = await ask(fwd)
        assert addresses(msg) == ["192.0.2.1"] and msg.rcode() == dns.rcode.NOERROR
        first, second = fwd.upstreams.all
        assert first.stats.errors[kind] == 1 and second.stats.answers == 1
        assert (first.srtt >= 2 * fwd.settings.try_timeout) == penalised
        if penalised:  # the next lookup starts with the good one
            assert fwd.upstreams.ranked()[0] is second


async def test_an_unreachable_upstream_fails_over_at_once():
    async with FakeUpstream(answering(A_300)) as good:
        fwd = Forwarder(settings(free_port(), good.port, try_timeout=2.0), in_zone)
        started = time.monotonic()
        msg = await ask(fwd)
    assert addresses(msg) == ["192.0.2.1"]
    assert time.monotonic() - started < 1.0  # ICMP port unreachable, not the 2 s timeout
    assert fwd.upstreams.all[0].stats.errors["network"] == 1


async def test_truncated_reply_is_asked_again_over_tcp():
    records = [f"big.example.com. 300 IN TXT \"{'x' * 200}\" \"{n}\"" for n in range(10)]

    async def handler(data: bytes, over_tcp: bool):
        return [(reply_to(data, *records, tc=not over_tcp), "same")]

    async with FakeUpstream(handler) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        over_udp = await ask(fwd, query("big.example.com.", "TXT"))
        over_tcp = await ask(fwd, query("big.example.com.", "TXT"), tcp=True)
    assert (up.udp_queries, up.tcp_queries) == (1, 1)
    assert fwd.upstreams.all[0].stats.errors["truncated"] == 1
    assert over_udp.flags & dns.flags.TC and not over_udp.answer  # 2 KB does not fit the client's 1232
    assert len(over_tcp.answer[0]) == 10  # from the cache, over TCP: everything


@pytest.mark.parametrize("client_edns, fits", [(False, False), (True, True)])
async def test_client_udp_limit(client_edns, fits):
    records = [f"www.example.com. 300 IN A 192.0.2.{n}" for n in range(1, 40)]  # ~700 bytes
    async with FakeUpstream(answering(*records)) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        msg = await ask(fwd, query(edns=client_edns))
    assert bool(msg.flags & dns.flags.TC) != fits
    assert len(addresses(msg)) == (39 if fits else 0)


class Switch:
    """A handler whose upstream answers until told to fail (silently)."""

    def __init__(self, *records: str) -> None:
        self.records = records
        self.failing = False
        self.delay = 0.0  # seconds before each answer

    async def __call__(self, data: bytes, over_tcp: bool):
        if self.delay:
            await asyncio.sleep(self.delay)
        return None if self.failing else [(reply_to(data, *self.records), "same")]


STALE_CASES = [
    # (stale_for, seconds after storing, rcode, TTL served)
    (0, 400, dns.rcode.SERVFAIL, None),
    (3600, 400, dns.rcode.NOERROR, 30),
    (3600, 300 + 3600, dns.rcode.SERVFAIL, None),  # past the stale window
]


@pytest.mark.parametrize("stale_for, later, rcode, ttl", STALE_CASES)
async def test_all_upstreams_failing(stale_for, later, rcode, ttl):
    clock = Clock()
    switch = Switch(A_300)
    async with FakeUpstream(switch) as up:
        fwd = Forwarder(settings(up.port, serve_stale=stale_for, deadline=0.5), in_zone, clock=clock)
        await ask(fwd)
        switch.failing = True
        clock.now += later
        msg = await ask(fwd)
    assert msg.rcode() == rcode
    assert (msg.answer[0].ttl if msg.answer else None) == ttl
    assert (fwd.stats.stale_served, fwd.stats.servfail) == ((1, 0) if ttl else (0, 1))


SLOW_UPSTREAM_CASES = [
    # (serve_stale, upstream delay, TTL the client gets, then the TTL a second client gets)
    (0, 0.3, 300, 300),        # stale off: the client waits for the fresh answer
    (3600, 0.05, 300, 300),    # the upstream answers within stale_answer_after: fresh
    (3600, 0.3, 30, 300),      # it does not: stale at once, and the lookup still refreshes the cache
]


@pytest.mark.parametrize("stale_for, delay, first_ttl, then_ttl", SLOW_UPSTREAM_CASES)
async def test_a_slow_upstream_and_the_client_response_timer(stale_for, delay, first_ttl, then_ttl):
    """RFC 8767 section 5: with serve-stale on, a client waits at most stale_answer_after for an expired name."""
    clock = Clock()
    switch = Switch(A_300)
    async with FakeUpstream(switch) as up:
        fwd = Forwarder(settings(up.port, serve_stale=stale_for, stale_answer_after=0.15, try_timeout=1.0),
                        in_zone, clock=clock)
        await ask(fwd)
        clock.now += 400  # expired
        switch.delay = delay
        started = asyncio.get_running_loop().time()
        first = await ask(fwd)
        waited = asyncio.get_running_loop().time() - started
        await asyncio.sleep(delay + 0.1)  # the lookup finishes
        then = await ask(fwd)
    assert (first.answer[0].ttl, then.answer[0].ttl) == (first_ttl, then_ttl)
    assert (waited < delay) == (first_ttl == 30)
    assert up.udp_queries == 2  # the first answer's, and one refresh
    assert fwd.stats.stale_served == (1 if first_ttl == 30 else 0)


async def test_concurrent_misses_share_one_upstream_query():
    async with FakeUpstream(answering(A_300, delay=0.1)) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        queries = [query(qid=n) for n in range(20)]
        replies = await asyncio.gather(*(fwd.resolve(q, CLIENT, 1232) for q in queries))
    assert up.udp_queries == 1
    assert [decode(r).id for r in replies] == list(range(20))
    assert all(addresses(decode(r)) == ["192.0.2.1"] for r in replies)
    assert (fwd.stats.lookups, fwd.stats.coalesced) == (1, 19)


async def test_a_client_that_gives_up_does_not_cancel_the_others():
    async with FakeUpstream(answering(A_300, delay=0.2)) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        quitter = asyncio.ensure_future(fwd.resolve(query(qid=1), CLIENT, 1232))
        stayer = asyncio.ensure_future(fwd.resolve(query(qid=2), CLIENT, 1232))
        await asyncio.sleep(0.05)
        quitter.cancel()
        msg = decode(await stayer)
    assert addresses(msg) == ["192.0.2.1"]


COUNTDOWN_CASES = [
    # (seconds later, TTL the client sees, upstream queries so far)
    (0, 300, 1),
    (100, 200, 1),
    (299, 1, 1),
    (300, 300, 2),  # expired: asked again, fresh TTL
]


@pytest.mark.parametrize("later, ttl, upstream_queries", COUNTDOWN_CASES)
async def test_ttl_counts_down(later, ttl, upstream_queries):
    clock = Clock()
    async with FakeUpstream(answering(A_300)) as up:
        fwd = Forwarder(settings(up.port), in_zone, clock=clock)
        await ask(fwd)
        clock.now += later
        msg = await ask(fwd)
    assert msg.answer[0].ttl == ttl
    assert up.udp_queries == upstream_queries


NEGATIVE_CASES = [
    # (rcode, seconds later, SOA TTL the client sees, upstream queries so far)
    (dns.rcode.NXDOMAIN, 0, 60, 1),
    (dns.rcode.NXDOMAIN, 59, 1, 1),
    (dns.rcode.NXDOMAIN, 60, 60, 2),
    (dns.rcode.NOERROR, 30, 30, 1),  # NODATA
]


@pytest.mark.parametrize("rcode, later, ttl, upstream_queries", NEGATIVE_CASES)
async def test_negative_answers_are_cached_by_soa_minimum(rcode, later, ttl, upstream_queries):
    clock = Clock()
    async with FakeUpstream(answering(authority=(SOA,), rcode=rcode)) as up:
        fwd = Forwarder(settings(up.port), in_zone, clock=clock)
        await ask(fwd, query("nope.example.com."))
        clock.now += later
        msg = await ask(fwd, query("nope.example.com."))
    assert msg.rcode() == rcode and not msg.answer
    assert msg.authority[0].ttl == ttl
    assert up.udp_queries == upstream_queries


async def test_negative_answer_without_soa_is_not_cached():
    async with FakeUpstream(answering(rcode=dns.rcode.NXDOMAIN)) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        for _ in range(2):
            assert (await ask(fwd)).rcode() == dns.rcode.NXDOMAIN
    assert up.udp_queries == 2


async def test_servfail_is_not_cached():
    async with FakeUpstream(rcode_reply(dns.rcode.SERVFAIL)) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        for _ in range(2):
            assert (await ask(fwd)).rcode() == dns.rcode.SERVFAIL
    assert up.udp_queries == 2 and fwd.stats.servfail == 2


async def test_records_of_our_zone_from_upstream_are_stripped():
    async with FakeUpstream(answering("www.example.com. 300 IN CNAME reg.azurecr.test.",
                                      "reg.azurecr.test. 300 IN A 6.6.6.6",
                                      authority=("azurecr.test. 300 IN NS ns.evil.example.",),
                                      additional=("ns.evil.example. 300 IN A 6.6.6.7",))) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        msg = await ask(fwd)
    assert [rrset.to_text() for rrset in msg.answer] == ["www.example.com. 300 IN CNAME reg.azurecr.test."]
    assert msg.authority == [] and msg.additional == []
    assert fwd.stats.stripped == 2


REFUSAL_CASES = [
    # (client address, name, class, type, refused counter)
    ("127.0.0.1", "reg.azurecr.test.", "IN", "A", "refused_in_zone"),
    ("127.0.0.1", "AZURECR.test.", "IN", "SOA", "refused_in_zone"),
    ("10.1.2.3", "www.example.com.", "IN", "A", "refused_client"),
    ("::ffff:10.1.2.3", "www.example.com.", "IN", "A", "refused_client"),
    ("not an address", "www.example.com.", "IN", "A", "refused_client"),
    ("127.0.0.1", "www.example.com.", "CH", "TXT", "refused_other"),
    ("127.0.0.1", "example.com.", "IN", "AXFR", "refused_other"),
    ("::1", "www.example.com.", "IN", "A", None),
    ("::ffff:127.0.0.1", "www.example.com.", "IN", "A", None),  # IPv4-mapped loopback
]


@pytest.mark.parametrize("client, name, rdclass, rdtype, counter", REFUSAL_CASES)
async def test_refusals_never_reach_an_upstream(client, name, rdclass, rdtype, counter):
    msg = dns.message.make_query(name, rdtype, rdclass)
    async with FakeUpstream(answering(A_300)) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        reply = await ask(fwd, wire.parse_query(msg.to_wire()), client=client)
    if counter is None:
        assert reply.rcode() == dns.rcode.NOERROR and up.udp_queries == 1
    else:
        assert reply.rcode() == dns.rcode.REFUSED and up.received == []
        assert getattr(fwd.stats, counter) == 1


@pytest.mark.parametrize("client, name", [("10.1.2.3", "www.example.com."), ("127.0.0.1", "reg.azurecr.test.")])
async def test_answer_later_refuses_too(client, name):
    """A caller that skips answer_now still cannot have a stranger served or our zone forwarded."""
    async with FakeUpstream(answering(A_300)) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        reply = decode(await fwd.answer_later(query(name), client, 1232))
    assert reply.rcode() == dns.rcode.REFUSED and up.received == []


async def test_allowed_clients_come_from_the_settings():
    async with FakeUpstream(answering(A_300)) as up:
        fwd = Forwarder(settings(up.port, clients=(ipaddress.ip_network("10.0.0.0/8"),)), in_zone)
        assert (await ask(fwd, client="10.1.2.3")).rcode() == dns.rcode.NOERROR
        assert (await ask(fwd, client="127.0.0.1")).rcode() == dns.rcode.REFUSED


# (source address, may recurse) against clients 10.0.0.0/8 and ::1, each asked twice (the second from the memo)
ALLOWS_CASES = [("10.1.2.3", True), ("127.0.0.1", False), ("::1", True), ("::ffff:10.0.0.1", True),
                ("fe80::1%eth0", False), ("not an address", False), ("", False)]


def test_allows_remembers_its_answers_within_a_bound(monkeypatch):
    monkeypatch.setattr(forwarder_module, "ALLOWED_MEMO_SIZE", 4)
    fwd = Forwarder(settings(53, clients=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))),
                    in_zone)
    for _ in range(2):
        assert [(client, fwd.allows(client)) for client, _ in ALLOWS_CASES] == ALLOWS_CASES
        assert len(fwd._allowed) <= 4


async def test_what_goes_upstream():
    async with FakeUpstream(answering(A_300)) as up:
        fwd = Forwarder(settings(up.port), in_zone)
        await ask(fwd, query(ecs="192.0.2.0", payload=4096, dnssec_ok=True, cd=True))
        await ask(fwd, query())  # no DO, no CD: another cache key
    sent = [dns.message.from_wire(data) for data, _ in up.received]
    assert len(sent) == 2
    assert [bool(m.ednsflags & dns.flags.DO) for m in sent] == [True, False]
    assert [bool(m.flags & dns.flags.CD) for m in sent] == [True, False]
    assert all(m.options == () and m.payload == 1232 and m.flags & dns.flags.RD for m in sent)


async def test_cache_entries_are_bounded():
    async with FakeUpstream(answering("x.example. 300 IN A 192.0.2.1")) as up:
        fwd = Forwarder(settings(up.port, max_entries=2), in_zone)
        for name in ("a.example.", "b.example.", "c.example.", "a.example."):
            await ask(fwd, query(name))
    assert up.udp_queries == 4 and len(fwd.cache) == 2 and fwd.cache.evicted == 2


async def test_lookups_in_flight_are_bounded():
    async with FakeUpstream(answering(A_300, delay=0.2)) as up:
        fwd = Forwarder(settings(up.port, max_in_flight=1), in_zone)
        slow = asyncio.ensure_future(fwd.resolve(query("a.example."), CLIENT, 1232))
        await asyncio.sleep(0.05)
        refused = decode(await fwd.resolve(query("b.example."), CLIENT, 1232))
        assert refused.rcode() == dns.rcode.SERVFAIL and fwd.stats.overloaded == 1
        assert decode(await slow).rcode() == dns.rcode.NOERROR
        assert fwd.in_flight == 0


async def test_a_silent_upstream_is_retried_until_the_deadline():
    async with FakeUpstream(silent) as up:
        fwd = Forwarder(settings(up.port, try_timeout=0.2, deadline=0.7), in_zone)
        started = time.monotonic()
        msg = await ask(fwd)
        elapsed = time.monotonic() - started
    assert msg.rcode() == dns.rcode.SERVFAIL
    assert 0.65 < elapsed < 1.2
    assert 3 <= up.udp_queries <= 4  # at 0, 0.2, 0.4 (and 0.6 s unless the machine is slow): one deadline


async def test_describe_and_flush():
    clock = Clock()
    async with FakeUpstream(answering(A_300)) as up:
        fwd = Forwarder(settings(up.port, free_port()), in_zone, clock=clock)
        before = fwd.describe("www.example.com", 1)
        await ask(fwd)
        clock.now += 10
        after = fwd.describe("WWW.example.com.", 1)
        assert fwd.describe("reg.azurecr.test", 1).forwarded is False
        assert fwd.flush("www.example.com") == 1
        await ask(fwd)
    assert (before.forwarded, before.cached, before.ttl_left, before.first_upstream) == (
        True, False, None, f"127.0.0.1:{up.port}")
    assert (after.cached, after.ttl_left, after.negative, after.rcode, after.name) == (
        True, 290, False, 0, "www.example.com.")
    assert up.udp_queries == 2  # the flush made the second ask go upstream


async def test_a_bug_costs_one_servfail_not_an_exception():
    def broken(name: bytes) -> bool:
        raise RuntimeError("bug")

    fwd = Forwarder(settings(free_port()), broken)
    msg = await ask(fwd)
    assert msg.rcode() == dns.rcode.SERVFAIL and fwd.stats.errors == 1


async def test_close_ends_lookups_under_way():
    async with FakeUpstream(silent) as up:
        fwd = Forwarder(settings(up.port, try_timeout=5.0, deadline=5.0), in_zone)
        waiting = asyncio.ensure_future(fwd.resolve(query(), CLIENT, 1232))
        await asyncio.sleep(0.05)
        await fwd.close()
        msg = decode(await asyncio.wait_for(waiting, 1.0))
    assert msg.rcode() == dns.rcode.SERVFAIL


def test_under_uvloop():
    """The same sockets under uvloop, which dnsd runs on: UDP, then TCP after TC=1."""

    async def scenario():
        async def handler(data: bytes, over_tcp: bool):
            return [(reply_to(data, A_300, tc=not over_tcp), "same")]

        async with FakeUpstream(handler) as up:
            fwd = Forwarder(settings(up.port), in_zone)
            return await ask(fwd), up.udp_queries, up.tcp_queries

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        msg, udp, tcp = runner.run(scenario())
    assert addresses(msg) == ["192.0.2.1"] and (udp, tcp) == (1, 1)
