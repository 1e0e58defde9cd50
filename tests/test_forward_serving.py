"""Forwarding inside one process: QueryEngine hands names outside the zone to the forwarder for allowed
clients only (a cache hit now, a miss as a Task), keeps forwarded replies out of its packet cache,
bounds the clients waiting upstream, and sets RA for exactly the clients allowed to recurse; Dnsd
builds the forwarder from the config (never one of its own listen addresses), keeps it across a
reload that leaves the section alone, replaces it when the section changes, and followers apply the
flushes worker 0 takes."""
from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from dnsd.config import load_config
from dnsd.routing.overrides import OverrideStore
from dnsd.serving import runtime
from dnsd.serving.service import Dnsd, InvalidChange, NotForwarding
from tests.dnstest import isolated_example
from tests.forwardkit import FakeUpstream, answering, reply_to

A_RECORD = "www.example.com. 300 IN A 192.0.2.1"
ALLOWED, STRANGER = "127.0.0.1", "192.0.2.99"


async def addresses(data: bytes, over_tcp: bool):
    """An upstream with an address of every name asked, of the type asked."""
    question = dns.message.from_wire(data).question[0]
    rdata = "2001:db8::1" if question.rdtype == dns.rdatatype.AAAA else "192.0.2.1"
    return [(reply_to(data, f"{question.name} 300 IN {dns.rdatatype.to_text(question.rdtype)} {rdata}"), "same")]


def make_dnsd(tmp_path, forward: dict | None, **kwargs) -> Dnsd:
    tmp_path.mkdir(exist_ok=True)
    path = isolated_example(tmp_path, **({"forward": forward} if forward is not None else {}))
    config = load_config(path)
    return Dnsd(config, OverrideStore(config.admin.state_file, None), **kwargs)


def wire_query(name: str = "www.example.com.", rdtype: str = "A", qid: int = 7) -> bytes:
    query = dns.message.make_query(name, rdtype, use_edns=0)
    query.id = qid
    return query.to_wire()


async def reply_of(result) -> dns.message.Message:
    return dns.message.from_wire(result if type(result) is bytes else await result)


async def test_a_miss_is_a_task_a_hit_is_bytes_and_neither_enters_the_packet_cache(tmp_path):
    async with FakeUpstream(answering(A_RECORD)) as up:
        dnsd = make_dnsd(tmp_path, {"upstreams": [f"127.0.0.1:{up.port}"]})
        engine = dnsd.engine
        miss = engine.handle(wire_query(), ALLOWED, False)
        assert isinstance(miss, asyncio.Task)
        first = await reply_of(miss)
        hit = engine.handle(wire_query(qid=8), ALLOWED, False)
        assert type(hit) is bytes
        second = await reply_of(hit)
    assert [str(m.answer[0]) for m in (first, second)] == [A_RECORD] * 2
    assert engine.cache == {}  # the forward cache has its own entries, counted down
    assert up.udp_queries == 1
    counted = {key: n for key, n in engine.stats.counts.items() if key[1] == runtime.FORWARDED}
    assert counted == {("", runtime.FORWARDED, 1, 0, "", ""): 2}


RA_CASES = [
    # (forward section, client, name, rcode, AA, RA)
    (None, ALLOWED, "www.example.com.", "REFUSED", False, False),  # forwarding off: as always
    (None, ALLOWED, "contoso.azurecr.test.", "NOERROR", True, False),
    ("on", ALLOWED, "www.example.com.", "NOERROR", False, True),
    ("on", ALLOWED, "contoso.azurecr.test.", "NOERROR", True, True),
    ("on", ALLOWED, "nope.azurecr.test.", "NXDOMAIN", True, True),
    ("on", STRANGER, "www.example.com.", "REFUSED", False, False),
    ("on", STRANGER, "contoso.azurecr.test.", "NOERROR", True, False),
]


@pytest.mark.parametrize("forward, client, name, rcode, aa, ra", RA_CASES)
async def test_recursion_available_only_to_allowed_clients(tmp_path, forward, client, name, rcode, aa, ra):
    async with FakeUpstream(answering(A_RECORD)) as up:
        dnsd = make_dnsd(tmp_path, {"upstreams": [f"127.0.0.1:{up.port}"]} if forward else None)
        for qid in (1, 2):  # built, then from the packet cache
            reply = await reply_of(dnsd.engine.handle(wire_query(name, qid=qid), client, False))
            assert (dns.rcode.to_text(reply.rcode()), bool(reply.flags & dns.flags.AA),
                    bool(reply.flags & dns.flags.RA)) == (rcode, aa, ra)
    assert len(up.received) == (1 if (forward, name, client) == ("on", "www.example.com.", ALLOWED) else 0)


async def test_the_clients_waiting_upstream_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "MAX_PENDING_FORWARDS", 2)
    async with FakeUpstream(answering(A_RECORD, delay=0.2)) as up:
        dnsd = make_dnsd(tmp_path, {"upstreams": [f"127.0.0.1:{up.port}"]})
        engine = dnsd.engine
        waiting = [engine.handle(wire_query(qid=qid), ALLOWED, False) for qid in (1, 2)]
        refused = engine.handle(wire_query(qid=3), ALLOWED, False)
        assert type(refused) is bytes and dns.message.from_wire(refused).rcode() == dns.rcode.SERVFAIL
        assert engine.stats.forward_overloaded == 1 and engine.forward_pending == 2
        replies = [await reply_of(task) for task in waiting]
    assert [m.rcode() for m in replies] == [dns.rcode.NOERROR] * 2 and engine.forward_pending == 0
    assert up.udp_queries == 1  # the two waiting shared one lookup


RELOAD_CASES = [
    # (forward section before, after, a new forwarder)
    ({"upstreams": ["192.0.2.53"]}, {"upstreams": ["192.0.2.53"]}, False),  # unchanged: cache and SRTT kept
    ({"upstreams": ["192.0.2.53"]}, {"upstreams": ["192.0.2.54"]}, True),
    ({"upstreams": ["192.0.2.53"]}, {"upstreams": ["192.0.2.53"], "clients": ["10.0.0.0/8"]}, True),
    ({"upstreams": ["192.0.2.53"]}, None, True),
    (None, {"upstreams": ["192.0.2.53"]}, True),
    (None, None, False),
]


@pytest.mark.parametrize("before, after, replaced", RELOAD_CASES)
async def test_reload_replaces_the_forwarder_only_when_its_section_changes(tmp_path, before, after, replaced):
    dnsd = make_dnsd(tmp_path, before)
    old = dnsd.forwarder
    data = yaml.safe_load((tmp_path / "geotm.yaml").read_text())
    data.pop("forward", None)
    if after is not None:
        data["forward"] = after
    (tmp_path / "geotm.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = await dnsd.reload()
    assert result.ok, result.problems
    assert (dnsd.forwarder is not old) == replaced
    assert (dnsd.forwarder is None) == (after is None)


def test_our_own_listen_addresses_are_never_upstreams(tmp_path):
    """`dnsd serve --listen` may name an address the config did not: it is left out all the same."""
    dnsd = make_dnsd(tmp_path, {"upstreams": ["127.0.0.1:5300", "192.0.2.53"]}, listen=[("127.0.0.1", 5300)])
    assert [up.address for up in dnsd.forwarder.upstreams.all] == ["192.0.2.53:53"]


FLUSH_CASES = [
    # (name or None for all, entries flushed of the three cached, left for the follower)
    ("www.example.com", 2, 1),  # A and AAAA of it
    ("WWW.Example.COM.", 2, 1),
    ("other.example.com", 1, 2),
    (None, 3, 0),
]


@pytest.mark.parametrize("name, flushed, left", FLUSH_CASES)
async def test_flushes_reach_the_follower_workers(tmp_path, name, flushed, left):
    flush_file = str(tmp_path / "forward-flushes.jsonl")
    async with FakeUpstream(addresses) as up:
        forward = {"upstreams": [f"127.0.0.1:{up.port}"]}
        leader = make_dnsd(tmp_path / "0", forward, flush_file=flush_file)
        follower = make_dnsd(tmp_path / "1", forward, flush_file=flush_file)
        for dnsd in (leader, follower):
            for query_name, rdtype in (("www.example.com.", "A"), ("www.example.com.", "AAAA"),
                                       ("other.example.com.", "A")):
                await reply_of(dnsd.engine.handle(wire_query(query_name, rdtype), ALLOWED, False))
    assert leader.flush_forwarded(name, "tester") == flushed
    assert len(follower.forwarder.cache) == 3
    assert follower.follow_flushes() == 1
    assert (len(leader.forwarder.cache), len(follower.forwarder.cache)) == (left, left)
    assert follower.follow_flushes() == 0  # each flush once


def test_flush_refusals(tmp_path):
    with pytest.raises(NotForwarding, match="forwarding is off"):
        make_dnsd(tmp_path / "off", None).flush_forwarded("docker.io", "tester")
    with pytest.raises(InvalidChange, match="bad name"):
        make_dnsd(tmp_path / "on", {"upstreams": ["192.0.2.53"]}).flush_forwarded("a" * 64 + ".io", "tester")


async def test_a_repeated_forwarded_question_is_answered_unparsed_while_the_entry_and_second_hold(
        tmp_path, monkeypatch):
    """The forward hits of the engine: the same bytes as the forwarder would build, counted as hits,
    and given up when a second passes (TTLs count down) or the entry is flushed."""
    now = [1000.0]
    parsed = []
    real_parse = runtime.wire.parse_query
    monkeypatch.setattr(runtime.wire, "parse_query", lambda data: parsed.append(data) or real_parse(data))
    async with FakeUpstream(answering(A_RECORD)) as up:
        dnsd = make_dnsd(tmp_path, {"upstreams": [f"127.0.0.1:{up.port}"]})
        engine, forwarder = dnsd.engine, dnsd.forwarder
        forwarder.clock = lambda: now[0]
        await reply_of(engine.handle(wire_query(), ALLOWED, False))  # the miss: fetched, stored
        first = engine.handle(wire_query(qid=8), ALLOWED, False)      # a hit through the forwarder
        parsed.clear()
        again = engine.handle(wire_query(qid=9), ALLOWED, False)      # the same question again
        assert parsed == [] and again[2:] == first[2:] and again[:2] == wire_query(qid=9)[:2]
        assert forwarder.stats.cache_hits == 2
        now[0] += 1.2  # a second later the TTLs are one lower: the kept bytes no longer serve
        later = await reply_of(engine.handle(wire_query(qid=10), ALLOWED, False))
        assert parsed and later.answer[0].ttl == 299
        assert dnsd.flush_forwarded("www.example.com", actor="test") == 1
        parsed.clear()
        refetched = engine.handle(wire_query(qid=11), ALLOWED, False)
        assert isinstance(refetched, asyncio.Task) and parsed  # flushed: a miss, asked upstream again
        await refetched
    assert up.udp_queries == 2
    counted = {key: n for key, n in engine.stats.counts.items() if key[1] == runtime.FORWARDED}
    assert sum(counted.values()) == 5
