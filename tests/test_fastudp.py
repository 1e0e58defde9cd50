"""The batched UDP listener (dnsd.protocol._fastudp through udp.BatchedUdp, packet-cache hits answered in
C) against the asyncio one (UdpProtocol): for a table of queries, over loopback, the reply bytes are
the ones the engine's handle() gives (asked twice and with another ID: a miss, then hits), counted
alike; a swap empties the cache; RRL limits hits too. The same table against real dnsd both ways. And
the extension is really used wherever it could be built."""
from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
import sysconfig
from pathlib import Path

import dns.message
import dns.rdataclass
import pytest
import structlog.testing

from dnsd.model import RateLimitSettings
from dnsd.protocol.rrl import ResponseRateLimiter
from dnsd.protocol.server import DnsServer
from dnsd.protocol.udp import BATCH_ENV, batched_io_unavailable
from dnsd.routing.health import EndpointHealth, HealthSnapshot, Status
from dnsd.serving.runtime import QueryEngine, Snapshot, new_snapshot
from tests import harness
from tests.dnstest import engine_from, example_dict, isolated_example, make_query, variant

try:
    from tests.test_server_io import ipv6_loopback
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from test_server_io import ipv6_loopback


def _wire(message: dns.message.Message) -> bytes:
    return message.to_wire()


def _badvers() -> bytes:
    query = make_query("contoso.azurecr.test")
    query.use_edns(1, payload=1232)
    return query.to_wire()


def _chaos() -> bytes:
    return dns.message.make_query("version.bind", "TXT", rdclass=dns.rdataclass.CH).to_wire()


def _padded(size: int) -> bytes:
    """A query made big by EDNS padding (option 12): the listener must read it whole."""
    plain = _wire(make_query("contoso.azurecr.test", edns=False))
    option = struct.pack("!HH", 12, size) + b"\0" * size
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(option)) + option  # root, OPT, size, TTL, rdata
    return plain[:10] + b"\x00\x01" + plain[12:] + opt  # ARCOUNT 1


def _as_response() -> bytes:
    data = bytearray(_wire(make_query("contoso.azurecr.test")))
    data[2] |= 0x80  # QR: a response, never answered
    return bytes(data)


#   case                        query bytes (ID first)
QUERIES = [
    ("global name A",           _wire(make_query("contoso.azurecr.test"))),
    ("global name AAAA",        _wire(make_query("contoso.azurecr.test", "AAAA"))),
    ("0x20 case",               _wire(make_query("CoNtOsO.AzUrEcR.TeSt"))),
    ("no EDNS",                 _wire(make_query("contoso.azurecr.test", edns=False))),
    ("ECS public subnet",       _wire(make_query("contoso.azurecr.test", ecs="198.51.100.0/24"))),
    ("ECS private subnet",      _wire(make_query("contoso.azurecr.test", ecs="10.1.4.0/24"))),
    ("ECS /0",                  _wire(make_query("contoso.azurecr.test", ecs="0.0.0.0/0"))),
    ("privatelink CNAME",       _wire(make_query("contoso.privatelink.azurecr.test"))),
    ("apex ANY, 512 bytes",     _wire(make_query("azurecr.test", "ANY", payload=512))),
    ("apex ANY, no EDNS",       _wire(make_query("azurecr.test", "ANY", edns=False))),
    ("big TXT, EDNS 4096",      _wire(make_query("big.contoso.azurecr.test", "TXT", payload=4096))),
    ("big TXT, EDNS 600 (TC)",  _wire(make_query("big.contoso.azurecr.test", "TXT", payload=600))),
    ("big TXT, no EDNS (TC)",   _wire(make_query("big.contoso.azurecr.test", "TXT", edns=False))),
    ("a 9 kB query",            _padded(9000)),
    ("NXDOMAIN",                _wire(make_query("nothing.azurecr.test"))),
    ("outside the zone",        _wire(make_query("example.com"))),
    ("AXFR",                    _wire(make_query("azurecr.test", "AXFR"))),
    ("EDNS version 1",          _badvers()),
    ("class CH",                _chaos()),
    ("cut question",            _wire(make_query("contoso.azurecr.test"))[:20]),
    ("trailing garbage",        _wire(make_query("contoso.azurecr.test", edns=False)) + b"\x00\x07junk"),
    ("header only",             b"\x12\x34\x01\x00" + b"\x00" * 8),
    ("two bytes",               b"\x12\x34"),
    ("a response",              _as_response()),
]


def _config() -> dict:
    """The example, plus a ~1 kB TXT answer (truncated for clients offering less than that)."""
    zone = example_dict()["zone"]
    zone["soa"]["serial"] = 2026120201  # not `auto` (the load time): every server gives the same SOA
    big = {"name": "big.contoso", "type": "TXT", "ttl": 300, "values": [f"{i}" + "x" * 160 for i in range(6)]}
    zone["records"] = [*zone["records"], big]
    return variant(zone=zone)


def _with_id(data: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + data[2:] if len(data) >= 2 else data


async def _exchange(sock: socket.socket, data: bytes, expect_reply: bool) -> bytes | None:
    """One datagram out; its reply, or None when none came (a short wait when none is expected)."""
    loop = asyncio.get_running_loop()
    sock.send(data)
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), 2.0 if expect_reply else 0.15)
    except TimeoutError:
        return None


def _client(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(address)
    return sock


CLIENTS = ["127.0.0.1"] + (["::1"] if ipv6_loopback() else [])


@pytest.mark.parametrize("client", CLIENTS)
async def test_replies_and_counts_are_the_engines(udp_io, client):
    """Every query three times (a miss, a hit, a hit with another ID): the bytes the engine's handle()
    gives for it, and the engine counts what a reference engine asked directly counts."""
    engine, reference = engine_from(_config()), engine_from(_config())
    server = DnsServer(engine.handle, [(client, 0)], packet_cache=engine)
    await server.start()
    try:
        for case, data in QUERIES:
            with _client(server.addresses[0]) as sock:
                for qid in (0x1234, 0x1234, 0x4321):
                    asked = _with_id(data, qid)
                    expected = reference.handle(asked, client, False)
                    got = await _exchange(sock, asked, expected is not None)
                    assert got == expected, f"{case}, id {qid:#x}"
    finally:
        await server.stop()
    assert engine.stats.counts == reference.stats.counts
    assert engine.stats.located == reference.stats.located
    assert engine.stats.dropped == reference.stats.dropped
    assert sum(engine.stats.latency_counts) == sum(reference.stats.latency_counts)
    assert engine.stats.latency_sum > 0


async def test_many_hits_in_one_batch_are_each_answered_and_counted(udp_io):
    """A burst of the same question (one miss, then hits, many per recvmmsg): every one answered with
    its own ID, every one counted."""
    engine = engine_from()
    server = DnsServer(engine.handle, [("127.0.0.1", 0)], packet_cache=engine)
    await server.start()
    question = _wire(make_query("contoso.azurecr.test"))
    burst = 150
    try:
        with _client(server.addresses[0]) as sock:
            assert await _exchange(sock, question, True) is not None  # the miss that fills the cache
            before = sum(engine.stats.counts.values())
            for qid in range(burst):
                sock.send(_with_id(question, qid))
            loop = asyncio.get_running_loop()
            ids = set()
            for _ in range(burst):
                reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), 2.0)
                ids.add(int.from_bytes(reply[:2], "big"))
    finally:
        await server.stop()
    assert ids == set(range(burst))
    assert sum(engine.stats.counts.values()) - before == burst


def _with_answer_changed(engine: QueryEngine, question: bytes) -> Snapshot:
    """A snapshot in which the replica the client got for `question` is down."""
    config, compiled = engine.snapshot.config, engine.snapshot.compiled
    now = engine_from().handle(question, "127.0.0.1", False)
    registry = config.registries[0]
    for replica in registry.replicas:
        health = HealthSnapshot().with_status(registry.name, replica.name,
                                              EndpointHealth(Status.DEGRADED, "HTTP 503", 1.0, ""))
        changed = new_snapshot(config, health, generation=2, compiled=compiled)
        trial = engine_from()
        trial.swap(changed)
        if trial.handle(question, "127.0.0.1", False) != now:
            return changed
    raise AssertionError("no replica down changes the answer")


async def test_a_swap_empties_the_cache(udp_io):
    """After a swap the next reply is the new snapshot's, never the cached one."""
    engine = engine_from()
    server = DnsServer(engine.handle, [("127.0.0.1", 0)], packet_cache=engine)
    await server.start()
    question = _wire(make_query("contoso.azurecr.test"))
    try:
        with _client(server.addresses[0]) as sock:
            before = await _exchange(sock, question, True)
            assert await _exchange(sock, question, True) == before  # a hit
            engine.swap(_with_answer_changed(engine, question))
            after = await _exchange(sock, question, True)
    finally:
        await server.stop()
    expected = engine_from()
    expected.swap(engine.snapshot)
    assert after == expected.handle(question, "127.0.0.1", False)
    assert after != before


async def test_rate_limiting_applies_to_hits(udp_io):
    """One identical answer per second, no slip: of a burst of the same (cached) question one reply."""
    engine = engine_from()
    limiter = ResponseRateLimiter(RateLimitSettings(responses_per_second=1, slip=0))
    server = DnsServer(engine.handle, [("127.0.0.1", 0)], rate_limiter=limiter, packet_cache=engine)
    await server.start()
    question = _wire(make_query("contoso.azurecr.test"))
    try:
        with _client(server.addresses[0]) as sock:
            got = [await _exchange(sock, _with_id(question, qid), qid == 0) for qid in range(5)]
    finally:
        await server.stop()
    assert got[0] is not None and got[1:] == [None] * 4
    assert sum(engine.stats.counts.values()) == 5  # answered (and cached) all the same, then limited
    assert limiter.dropped[0] == 4


def _compiler_and_headers() -> bool:
    include = sysconfig.get_paths().get("include")
    return shutil.which(sysconfig.get_config_var("CC").split()[0] if sysconfig.get_config_var("CC") else "cc") \
        is not None and include is not None and (Path(include) / "Python.h").exists()


@pytest.mark.skipif(not _compiler_and_headers(), reason="no C compiler or Python headers: the extension is not built")
def test_the_extension_is_used_where_it_can_be_built(monkeypatch):
    """With a compiler and Python.h the install builds dnsd.protocol._fastudp: then it must be used,
    not silently replaced by the fallback (scripts/venv.sh reinstalls when _fastudp.c changes)."""
    monkeypatch.delenv(BATCH_ENV, raising=False)
    assert batched_io_unavailable() is None


@pytest.mark.parametrize("udp_io_setting, batched", [(None, True), ("0", False)])
async def test_start_up_says_which_udp_io(monkeypatch, udp_io_setting, batched):
    if udp_io_setting is None:
        monkeypatch.delenv(BATCH_ENV, raising=False)
        if batched_io_unavailable() is not None:
            pytest.skip(f"batched UDP I/O unavailable: {batched_io_unavailable()}")
    else:
        monkeypatch.setenv(BATCH_ENV, udp_io_setting)
    server = DnsServer(lambda data, ip, tcp: None, [("127.0.0.1", 0)])
    with structlog.testing.capture_logs() as logs:
        await server.start()
        await server.stop()
    events = [e for e in logs if e["event"] == "udp_io"]
    assert len(events) == 1 and events[0]["batched"] is batched, events


def test_real_dnsd_answers_the_same_both_ways(tmp_path, monkeypatch):
    """The real server, once batched and once on asyncio (GEOTM_UDP_BATCH=0): the same bytes for every
    query of the table, asked three times; its start-up log says which way it serves."""
    config = isolated_example(tmp_path, zone=_config()["zone"])
    monkeypatch.delenv(BATCH_ENV, raising=False)
    if batched_io_unavailable() is not None:
        pytest.skip(f"batched UDP I/O unavailable: {batched_io_unavailable()}")
    replies: dict[str, list[bytes | None]] = {}
    for way, setting in (("batched", "1"), ("asyncio", "0")):
        with harness.dnsd(config, env={BATCH_ENV: setting}) as process:
            got = []
            for case, data in QUERIES:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(0.3)
                    sock.connect(("127.0.0.1", process.port))
                    for qid in (0x1234, 0x1234, 0x4321):
                        sock.send(_with_id(data, qid))
                        try:
                            got.append(sock.recv(65535))
                        except TimeoutError:
                            got.append(None)
            said = [json.loads(line) for line in process.log_lines() if '"udp_io"' in line]
            assert len(said) == 1 and said[0]["batched"] is (way == "batched"), said
            replies[way] = got
    assert replies["batched"] == replies["asyncio"]
    assert sum(reply is not None for reply in replies["batched"]) > len(QUERIES) * 2
