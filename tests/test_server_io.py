"""DnsServer socket I/O on loopback (UDP, TCP framing and timeouts, binding), and tests/harness.py itself.

The handler is a stub that flips the QR bit of whatever it gets, so these tests see only transport
behaviour; LaterReplies returns a Future instead for some queries (a reply that comes later, as a
forwarded query's does) and completes it when the test says. The in-process tests run on the stock asyncio loop (pytest-asyncio); the TCP ones are
run again on uvloop (test_on_uvloop), which is what production uses. The UDP ones run with each UDP
listener (the `udp_io` fixture: batched through dnsd.protocol._fastudp, and asyncio's).
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import os
import resource
import socket
import struct
import sys
import time
import uuid
from pathlib import Path

import pytest
import structlog.testing

from dnsd.common.lifecycle import run
from dnsd.protocol.listening import ListenerSettings
from dnsd.protocol.server import DnsServer
from dnsd.model import RateLimitSettings
from dnsd.protocol.rrl import ResponseRateLimiter
from dnsd.protocol.tcp import _MAX_PENDING_REPLIES, source_key

try:
    from tests import harness
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import harness

SILENT_ID = 0xDEAD  # the stub handler returns None
FAILING_ID = 0xBEEF  # the stub handler raises


def flip_qr(data: bytes, client_ip: str, over_tcp: bool) -> bytes | None:
    qid = int.from_bytes(data[:2], "big")
    if qid == SILENT_ID:
        return None
    if qid == FAILING_ID:
        raise RuntimeError("stub handler failure")
    return data[:2] + bytes([data[2] | 0x80]) + data[3:]


def query(qid: int, pad: int = 0) -> bytes:
    """A DNS query for example.test. A (the stub does not parse it); `pad` trailing bytes make it bigger."""
    qname = b"".join(bytes([len(label)]) + label for label in (b"example", b"test")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1) + b"\x00" * pad


def reply_to(q: bytes) -> bytes:
    return q[:2] + bytes([q[2] | 0x80]) + q[3:]


def frame(*messages: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in messages)


@contextlib.asynccontextmanager
async def serving(settings: ListenerSettings = ListenerSettings(), listen=(("127.0.0.1", 0),), handler=flip_qr):
    server = DnsServer(handler, listen, settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def udp_exchange(address: tuple[str, int], payload: bytes, timeout: float = 1.0) -> bytes | None:
    """Send one datagram; the reply, or None when none comes within `timeout`."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(address)
        await loop.sock_sendall(sock, payload)
        try:
            return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
        except TimeoutError:
            return None


async def read_message(reader: asyncio.StreamReader, timeout: float = 1.0) -> bytes:
    async with asyncio.timeout(timeout):
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)


async def tcp_exchange(address: tuple[str, int], payload: bytes, timeout: float = 1.0) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(frame(payload))
        return await read_message(reader, timeout)
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the server closes (EOF or reset) within `timeout`; replies still pending are skipped."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


# --- handler results, over UDP and TCP ------------------------------------------------------

#   query id       expected from the server
HANDLER_CASES = [
    (1, "reply"),  # the handler's bytes come back unchanged
    (SILENT_ID, "nothing"),  # handler returned None
    (FAILING_ID, "nothing"),  # handler raised: logged, nothing sent
    (2, "reply"),  # ...and the next query is answered
]


async def test_udp_handler_results(udp_io):
    async with serving() as server:
        address = server.addresses[0]
        with structlog.testing.capture_logs() as logs:
            for qid, expected in HANDLER_CASES:
                q = query(qid)
                got = await udp_exchange(address, q, timeout=1.0 if expected == "reply" else 0.2)
                assert got == (reply_to(q) if expected == "reply" else None), f"query id {qid:#x}"
    failures = [e for e in logs if e["event"] == "handler_failed"]
    assert len(failures) == 1
    assert failures[0]["client"] == "127.0.0.1" and "stub handler failure" in failures[0]["error"]


async def test_tcp_handler_results():
    # On one connection, replies come in order: after a query that gets nothing, the next
    # message read must be the reply to the next query that does get one.
    async with serving() as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        with structlog.testing.capture_logs() as logs:
            for qid, expected in HANDLER_CASES:
                writer.write(frame(query(qid)))
                if expected == "reply":
                    assert await read_message(reader) == reply_to(query(qid)), f"query id {qid:#x}"
        writer.close()
    failures = [e for e in logs if e["event"] == "handler_failed"]
    assert len(failures) == 1 and failures[0]["client"] == "127.0.0.1"


# --- TCP framing and connection handling ----------------------------------------------------


async def test_tcp_pipelined_queries_in_one_write():
    async with serving() as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        queries = [query(10), query(11, pad=300), query(12)]
        writer.write(frame(*queries))  # one segment, three messages
        assert [await read_message(reader) for _ in queries] == [reply_to(q) for q in queries]
        writer.close()


async def test_tcp_message_split_across_writes():
    async with serving() as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        data = frame(query(20), query(21))
        for i in range(len(data)):  # one byte at a time
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        assert await read_message(reader) == reply_to(query(20))
        assert await read_message(reader) == reply_to(query(21))
        writer.close()


async def test_tcp_zero_length_message_closes_after_earlier_replies():
    async with serving() as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        writer.write(frame(query(30)) + b"\x00\x00" + frame(query(31)))
        assert await read_message(reader) == reply_to(query(30))
        assert await reader.read(100) == b""  # closed; query 31 never answered
        writer.close()


async def test_tcp_half_close_still_gets_replies():
    async with serving() as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        writer.write(frame(query(40), query(41)))
        writer.write_eof()
        assert await read_message(reader) == reply_to(query(40))
        assert await read_message(reader) == reply_to(query(41))
        assert await closed_by_peer(reader, 1.0)
        writer.close()


async def test_tcp_idle_timeout_closes_connection():
    async with serving(ListenerSettings(tcp_idle_timeout=0.3)) as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        writer.write(frame(query(50)))
        assert await read_message(reader) == reply_to(query(50))
        started = time.monotonic()
        assert await closed_by_peer(reader, 2.0)
        assert time.monotonic() - started >= 0.25
        assert await wait_until(lambda: server.tcp_connections == 0, 1.0)
        writer.close()


async def test_tcp_stalled_length_prefix_does_not_delay_others():
    async with serving(ListenerSettings(tcp_idle_timeout=0.8)) as server:
        address = server.addresses[0]
        slow_reader, slow_writer = await asyncio.open_connection(*address)
        slow_writer.write(b"\x00")  # half a length prefix, then silence
        await slow_writer.drain()
        reader, writer = await asyncio.open_connection(*address)
        started = time.monotonic()
        for qid in range(60, 70):
            writer.write(frame(query(qid)))
            assert await read_message(reader, timeout=0.3) == reply_to(query(qid))
        assert time.monotonic() - started < 0.5
        # The stalled connection is eventually closed by the idle timeout.
        assert await closed_by_peer(slow_reader, 2.0)
        writer.close()
        slow_writer.close()


async def test_tcp_client_that_never_reads_is_dropped_without_delaying_others():
    settings = ListenerSettings(tcp_idle_timeout=10.0, tcp_write_timeout=0.4)
    async with serving(settings) as server:
        address = server.addresses[0]
        loop = asyncio.get_running_loop()
        hog = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up quickly
        hog.setblocking(False)
        await loop.sock_connect(hog, address)
        reader, writer = await asyncio.open_connection(*address)
        batch = frame(*(query(i, pad=480) for i in range(32)))  # 32 queries of ~512 bytes
        sent_queries, hog_reset = 0, False
        worst_latency = 0.0
        started = time.monotonic()
        pending = memoryview(b"")
        qid = 1000
        try:
            while sent_queries < 20_000 and time.monotonic() - started < 3.0:
                if not pending:
                    pending = memoryview(batch)
                    sent_queries += 32
                try:
                    n = hog.send(pending)
                    pending = pending[n:]
                    continue
                except BlockingIOError:
                    pass
                except (ConnectionResetError, BrokenPipeError):
                    hog_reset = True
                    break
                # The hog is blocked: the other client must still be answered promptly.
                qid += 1
                t0 = time.monotonic()
                writer.write(frame(query(qid)))
                assert await read_message(reader, timeout=0.5) == reply_to(query(qid))
                worst_latency = max(worst_latency, time.monotonic() - t0)
                await asyncio.sleep(0.02)
            assert qid > 1000, "the hog never got blocked"
            assert worst_latency < 0.25
            # The server drops the hog once its replies sat unread for tcp_write_timeout.
            assert hog_reset or await wait_until(lambda: server.tcp_connections == 1, 3.0)
            assert server.tcp_connections == 1
            writer.write(frame(query(1)))
            assert await read_message(reader, timeout=0.5) == reply_to(query(1))
        finally:
            hog.close()
            writer.close()


async def open_from(address: tuple[str, int], source: str):
    """A TCP connection from `source` (any 127.x.y.z address works on Linux loopback)."""
    return await asyncio.open_connection(*address, local_addr=(source, 0))


async def answered_within(reader, writer, qid: int, limit: float) -> bool:
    """Send one query; True when its reply comes back within `limit` seconds."""
    writer.write(frame(query(qid)))
    try:
        return await read_message(reader, timeout=limit) == reply_to(query(qid))
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return False


#   tcp_source_prefix_v4  hog's address  another client  that client gets a slot
PER_SOURCE_CASES = [
    (32, "127.0.0.2", "127.0.0.3", True),  # one IPv4 address is one source
    (24, "127.0.0.2", "127.0.0.3", False),  # same /24: the same source, already at its limit
    (24, "127.0.0.2", "127.0.1.3", True),  # another /24
]


@pytest.mark.parametrize("prefix, hog_ip, other_ip, admitted", PER_SOURCE_CASES,
                         ids=[f"/{p}-{o}" for p, _, o, _ in PER_SOURCE_CASES])
async def test_tcp_per_source_limit(prefix, hog_ip, other_ip, admitted):
    settings = ListenerSettings(tcp_max_connections=64, tcp_max_connections_per_source=4,
                                tcp_source_prefix_v4=prefix)
    async with serving(settings) as server:
        address = server.addresses[0]
        hog = [await open_from(address, hog_ip) for _ in range(4)]
        for i, (reader, writer) in enumerate(hog):
            assert await answered_within(reader, writer, 200 + i, 1.0)
        with structlog.testing.capture_logs() as logs:
            extra_reader, extra_writer = await open_from(address, hog_ip)
            assert await closed_by_peer(extra_reader, 1.0), "the hog got a fifth connection"
        assert [(e["event"], e["reason"], e["source"]) for e in logs] == [
            ("tcp_connection_refused", "per-source limit", f"{hog_ip.rsplit('.', 1)[0]}.0/24" if prefix == 24
             else f"{hog_ip}/32")]
        started = time.monotonic()
        reader, writer = await open_from(address, other_ip)
        if admitted:
            assert await answered_within(reader, writer, 210, 0.1), "another source was not answered in 100 ms"
            assert time.monotonic() - started < 0.1
        else:
            assert await closed_by_peer(reader, 1.0)
        for i, (hog_reader, hog_writer) in enumerate(hog):  # the hog keeps what it had
            assert await answered_within(hog_reader, hog_writer, 220 + i, 1.0)
        stats = server.tcp_stats()
        assert stats.refused_per_source == (1 if admitted else 2) and stats.evicted == 0
        for _, w in (*hog, (extra_reader, extra_writer), (reader, writer)):
            w.close()


#   the order in which the three open connections send a query  the one closed for a fourth
EVICTION_CASES = [
    ("", 0),  # no query yet: the first accepted has waited longest
    ("012", 0),
    ("210", 2),
    ("102", 1),
    ("0", 1),  # 0 just spoke, 1 and 2 are idle since accept, 1 for longer
]


@pytest.mark.parametrize("order, victim", EVICTION_CASES, ids=[f"queries-{o or 'none'}" for o, _ in EVICTION_CASES])
async def test_tcp_at_the_limit_the_longest_idle_connection_makes_room(order, victim):
    settings = ListenerSettings(tcp_max_connections=3, tcp_idle_timeout=30, tcp_idle_timeout_under_load=10)
    async with serving(settings) as server:
        address = server.addresses[0]
        conns = [await open_from(address, f"127.0.0.{10 + i}") for i in range(3)]
        for i in order:
            reader, writer = conns[int(i)]
            assert await answered_within(reader, writer, 300 + int(i), 1.0)
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            newcomer = await open_from(address, "127.0.0.20")
            assert await answered_within(*newcomer, 310, 0.1), "the newcomer was not answered in 100 ms"
            assert time.monotonic() - started < 0.1
            assert await closed_by_peer(conns[victim][0], 1.0)
        assert [(e["event"], e["client"]) for e in logs] == [("tcp_connection_evicted", f"127.0.0.{10 + victim}")]
        for i, (reader, writer) in enumerate(conns):
            if i != victim:
                assert await answered_within(reader, writer, 320 + i, 1.0)
        assert server.tcp_connections == 3
        assert server.tcp_stats().evicted == 1
        for _, writer in (*conns, newcomer):
            writer.close()


#   connections opened (cap 4: 3/4 is 3)   at most this many left after the short idle timeout
UNDER_LOAD_CASES = [
    (2, 2),  # below 3/4 of the cap: the normal idle timeout (30 s) applies, nothing closes
    (3, 2),  # at 3/4: idle ones are closed after 0.3 s until below 3/4; the active one stays
    (4, 2),
]


@pytest.mark.parametrize("opened, left", [  # each waits 1.5 s: 3 of 4 in the fast suite, the others slow
    pytest.param(*c, id=f"{c[0]}-of-4", marks=() if c is UNDER_LOAD_CASES[1] else pytest.mark.slow)
    for c in UNDER_LOAD_CASES])
async def test_tcp_idle_timeout_is_shortened_near_the_cap(opened, left):
    settings = ListenerSettings(tcp_max_connections=4, tcp_idle_timeout=30, tcp_idle_timeout_under_load=0.3)
    async with serving(settings) as server:
        address = server.addresses[0]
        conns = [await open_from(address, "127.0.0.1") for _ in range(opened)]
        active_reader, active_writer = conns[0]
        deadline = time.monotonic() + 1.5
        qid = 400
        while time.monotonic() < deadline:  # the first one keeps asking; the others say nothing
            assert await answered_within(active_reader, active_writer, qid, 1.0), "an active connection was closed"
            qid += 1
            await asyncio.sleep(0.1)
        assert server.tcp_connections <= left
        assert server.tcp_stats().closed_under_load == opened - server.tcp_connections
        closed = [await closed_by_peer(reader, 0.2) for reader, _ in conns[1:]]
        assert closed.count(True) == opened - server.tcp_connections
        for _, writer in conns:
            writer.close()


#   address          v4 prefix  v6 prefix  source
SOURCE_KEY_CASES = [
    ("192.0.2.7", 32, 56, "192.0.2.7/32"),
    ("192.0.2.7", 24, 56, "192.0.2.0/24"),
    ("192.0.2.7", 0, 56, "0.0.0.0/0"),
    ("2001:db8:1:2ff::9", 32, 56, "2001:db8:1:200::/56"),
    ("2001:db8:1:2ff::9", 32, 128, "2001:db8:1:2ff::9/128"),
    ("::ffff:192.0.2.7", 24, 56, "192.0.2.0/24"),  # IPv4-mapped: counted as its IPv4 address
    ("fe80::1%eth0", 32, 64, "fe80::/64"),  # scope id dropped
    ("?", 32, 56, "?"),  # no address (peer unknown): its own source
]


@pytest.mark.parametrize("ip, v4, v6, expected", SOURCE_KEY_CASES)
def test_source_key(ip, v4, v6, expected):
    assert source_key(ip, v4, v6) == expected


#   settings                                          error names
BAD_SETTINGS = [
    (dict(tcp_max_connections_per_source=0), "tcp_max_connections_per_source"),
    (dict(tcp_idle_timeout_under_load=0), "tcp_idle_timeout_under_load"),
    (dict(tcp_source_prefix_v4=33), "tcp_source_prefix_v4"),
    (dict(tcp_source_prefix_v6=-1), "tcp_source_prefix_v6"),
]


@pytest.mark.parametrize("kwargs, name", BAD_SETTINGS, ids=[n for _, n in BAD_SETTINGS])
def test_bad_listener_settings_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=f"ListenerSettings.{name} must be"):
        ListenerSettings(**kwargs)


async def test_stop_closes_open_tcp_connections(udp_io):
    server = DnsServer(flip_qr, [("127.0.0.1", 0)])
    await server.start()
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    writer.write(frame(query(90)))
    assert await read_message(reader) == reply_to(query(90))
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 1.0
    assert await closed_by_peer(reader, 1.0)
    assert server.tcp_connections == 0
    writer.close()


# --- binding ----------------------------------------------------------------------------------


async def test_udp_and_tcp_share_the_port_picked_for_port_zero(udp_io):
    async with serving(listen=[("127.0.0.1", 0), ("127.0.0.1", 0)]) as server:
        assert len(server.addresses) == 2
        for host, port in server.addresses:
            assert host == "127.0.0.1" and port != 0
            assert await udp_exchange((host, port), query(100)) == reply_to(query(100))
            assert await tcp_exchange((host, port), query(101)) == reply_to(query(101))


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_ipv6_loopback(udp_io):
    async with serving(listen=[("::1", 0)]) as server:
        host, port = server.addresses[0]
        assert host == "::1"
        assert await udp_exchange(("::1", port), query(110)) == reply_to(query(110))
        assert await tcp_exchange(("::1", port), query(111)) == reply_to(query(111))


#   taken by            type of the other socket     named in the error
ADDRESS_IN_USE = [
    ("udp", socket.SOCK_DGRAM, "(udp)"),
    ("tcp", socket.SOCK_STREAM, "(tcp)"),
]


@pytest.mark.parametrize("taken_by, sock_type, marker", ADDRESS_IN_USE, ids=[row[0] for row in ADDRESS_IN_USE])
async def test_start_on_address_in_use_names_the_address(taken_by, sock_type, marker):
    port = harness.free_port()
    with socket.socket(socket.AF_INET, sock_type) as other:
        other.bind(("127.0.0.1", port))
        if sock_type == socket.SOCK_STREAM:
            other.listen(1)
        server = DnsServer(flip_qr, [("127.0.0.1", port)])
        with pytest.raises(OSError) as info:
            await server.start()
    message = str(info.value)
    assert message.startswith(f"cannot listen on 127.0.0.1:{port} {marker}: "), message
    assert info.value.errno == errno.EADDRINUSE
    assert server.addresses == []
    # Whatever was opened before the failure was closed again: both are free now.
    async with serving(listen=[("127.0.0.1", port)]) as server:
        assert server.addresses == [("127.0.0.1", port)]


async def test_failure_on_second_address_closes_the_first(udp_io):
    port = harness.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", port))
        first = harness.free_port()
        server = DnsServer(flip_qr, [("127.0.0.1", first), ("127.0.0.1", port)])
        with pytest.raises(OSError, match=f"127.0.0.1:{port} \\(udp\\)"):
            await server.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", first))


# --- later replies: the handler returns a Future ---------------------------------------------

LATER = 0x4000  # queries with an id from here get a Future: their reply comes when the test says


class LaterReplies:
    """flip_qr for ids below LATER; for the others a Future per query, kept by id, that the test
    completes with the reply (answer), or otherwise."""

    def __init__(self) -> None:
        self.futures: dict[int, list[asyncio.Future]] = {}

    def __call__(self, data: bytes, client_ip: str, over_tcp: bool):
        qid = int.from_bytes(data[:2], "big")
        if qid < LATER:
            return flip_qr(data, client_ip, over_tcp)
        future = asyncio.get_running_loop().create_future()
        self.futures.setdefault(qid, []).append(future)
        return future

    @property
    def waiting(self) -> int:
        return sum(1 for futures in self.futures.values() for future in futures if not future.done())

    def answer(self, qid: int) -> None:
        for future in self.futures[qid]:
            future.set_result(reply_to(query(qid)))


async def udp_receive(sock: socket.socket, timeout: float) -> bytes | None:
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65535), timeout)
    except TimeoutError:
        return None


#   how the Future ends                     what the client gets
LATER_UDP_CASES = [
    ("reply", "reply"),
    ("none", "nothing"),  # silence, as a handler returning None
    ("cancelled", "nothing"),  # the server stopping: nothing sent
    ("failed", "nothing"),  # a bug: logged as a handler failure
]


@pytest.mark.parametrize("ending, expected", LATER_UDP_CASES)
async def test_udp_later_replies(ending, expected, udp_io):
    handler = LaterReplies()
    async with serving(handler=handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
                structlog.testing.capture_logs() as logs:
            sock.setblocking(False)
            sock.connect(server.addresses[0])
            sock.send(query(LATER + 1))
            assert await wait_until(lambda: handler.waiting == 1, 1.0)
            future = handler.futures[LATER + 1][0]
            {"reply": lambda: handler.answer(LATER + 1), "none": lambda: future.set_result(None),
             "cancelled": future.cancel, "failed": lambda: future.set_exception(RuntimeError("bug"))}[ending]()
            got = await udp_receive(sock, 1.0 if expected == "reply" else 0.2)
            sock.send(query(7))  # and the listener goes on
            assert await udp_receive(sock, 1.0) == reply_to(query(7))
    assert got == (reply_to(query(LATER + 1)) if expected == "reply" else None)
    assert [e["event"] for e in logs if e["event"] == "handler_failed"] == (["handler_failed"] if ending == "failed" else [])


async def test_udp_later_replies_pass_the_rate_limiter(udp_io):
    """Three clients' worth of the same later reply, one per second allowed, no slip: one arrives."""
    handler = LaterReplies()
    limiter = ResponseRateLimiter(RateLimitSettings(responses_per_second=1, slip=0))
    server = DnsServer(handler, [("127.0.0.1", 0)], rate_limiter=limiter)
    await server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(server.addresses[0])
            for _ in range(3):
                sock.send(query(LATER + 2))
            assert await wait_until(lambda: handler.waiting == 3, 1.0)
            handler.answer(LATER + 2)
            got = [await udp_receive(sock, 0.3) for _ in range(3)]
    finally:
        await server.stop()
    assert got.count(reply_to(query(LATER + 2))) == 1 and got.count(None) == 2
    assert limiter.dropped[0] == 2


async def test_tcp_later_replies_go_out_when_ready_out_of_order():
    handler = LaterReplies()
    async with serving(handler=handler) as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        writer.write(frame(query(LATER + 1), query(2), query(LATER + 3)))
        assert await read_message(reader) == reply_to(query(2))  # ready first, sent first
        handler.answer(LATER + 3)
        assert await read_message(reader) == reply_to(query(LATER + 3))
        handler.answer(LATER + 1)
        assert await read_message(reader) == reply_to(query(LATER + 1))
        writer.close()


async def test_tcp_later_replies_are_bounded_per_connection():
    """At _MAX_PENDING_REPLIES waiting, the connection's further queries are not read until one is
    written; then reading goes on, and every query is answered."""
    handler = LaterReplies()
    count = _MAX_PENDING_REPLIES + 6
    async with serving(handler=handler) as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        writer.write(frame(*(query(LATER + i) for i in range(count))))
        assert await wait_until(lambda: handler.waiting == _MAX_PENDING_REPLIES, 1.0)
        await asyncio.sleep(0.1)
        assert len(handler.futures) == _MAX_PENDING_REPLIES  # the rest wait in the buffer, unread
        handler.answer(LATER)
        assert await read_message(reader) == reply_to(query(LATER))
        assert await wait_until(lambda: len(handler.futures) == _MAX_PENDING_REPLIES + 1, 1.0)
        for i in range(1, count):
            if LATER + i not in handler.futures:
                assert await wait_until(lambda: LATER + i in handler.futures, 1.0)
            handler.answer(LATER + i)
        replies = {await read_message(reader) for _ in range(1, count)}
        assert replies == {reply_to(query(LATER + i)) for i in range(1, count)}
        writer.close()


async def test_tcp_a_connection_waiting_for_a_later_reply_is_not_idle():
    handler = LaterReplies()
    async with serving(ListenerSettings(tcp_idle_timeout=0.2), handler=handler) as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        writer.write(frame(query(LATER + 1)))
        await asyncio.sleep(0.6)  # three idle timeouts: not idle, its reply is still to come...
        assert await answered_within(reader, writer, 5, 1.0)  # ...so it is still served
        handler.answer(LATER + 1)
        assert await read_message(reader) == reply_to(query(LATER + 1))
        assert await closed_by_peer(reader, 1.0)  # idle again
        writer.close()


@pytest.mark.parametrize("goodbye", [b"eof", b"\x00\x00"], ids=["eof", "zero-length message"])
async def test_tcp_a_client_done_asking_still_gets_its_later_reply(goodbye):
    handler = LaterReplies()
    async with serving(handler=handler) as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        writer.write(frame(query(LATER + 1)))
        if goodbye == b"eof":
            writer.write_eof()
        else:
            writer.write(goodbye)
        assert await wait_until(lambda: handler.waiting == 1, 1.0)
        await asyncio.sleep(0.1)  # the server has seen the goodbye
        handler.answer(LATER + 1)
        assert await read_message(reader) == reply_to(query(LATER + 1))
        assert await closed_by_peer(reader, 1.0)
        writer.close()


async def test_tcp_eviction_spares_a_connection_waiting_for_a_later_reply():
    handler = LaterReplies()
    settings = ListenerSettings(tcp_max_connections=2, tcp_idle_timeout=30, tcp_idle_timeout_under_load=10)
    async with serving(settings, handler=handler) as server:
        address = server.addresses[0]
        waiting = await open_from(address, "127.0.0.10")
        waiting[1].write(frame(query(LATER + 1)))
        assert await wait_until(lambda: handler.waiting == 1, 1.0)
        other = await open_from(address, "127.0.0.11")
        assert await answered_within(*other, 5, 1.0)  # the waiting one is now the longest idle
        newcomer = await open_from(address, "127.0.0.12")
        assert await answered_within(*newcomer, 6, 1.0)
        assert await closed_by_peer(other[0], 1.0)  # evicted instead
        handler.answer(LATER + 1)
        assert await read_message(waiting[0]) == reply_to(query(LATER + 1))
        for _, writer in (waiting, other, newcomer):
            writer.close()


# --- the same TCP scenarios on uvloop ---------------------------------------------------------

UVLOOP_SCENARIOS = [
    test_udp_handler_results,
    test_tcp_handler_results,
    test_tcp_pipelined_queries_in_one_write,
    test_tcp_message_split_across_writes,
    test_tcp_zero_length_message_closes_after_earlier_replies,
    test_tcp_half_close_still_gets_replies,
    test_tcp_idle_timeout_closes_connection,
    test_tcp_stalled_length_prefix_does_not_delay_others,
    test_tcp_client_that_never_reads_is_dropped_without_delaying_others,
    test_stop_closes_open_tcp_connections,
    test_udp_and_tcp_share_the_port_picked_for_port_zero,
    test_udp_later_replies_pass_the_rate_limiter,
    test_tcp_later_replies_go_out_when_ready_out_of_order,
    test_tcp_later_replies_are_bounded_per_connection,
    test_tcp_a_connection_waiting_for_a_later_reply_is_not_idle,
    test_tcp_eviction_spares_a_connection_waiting_for_a_later_reply,
]
UVLOOP_CASES = [pytest.param(f, (), id=f.__name__.removeprefix("test_")) for f in UVLOOP_SCENARIOS] + [
    pytest.param(f, case, id=f"{f.__name__.removeprefix('test_')}-{i}",
                 marks=pytest.mark.slow if f is test_tcp_idle_timeout_is_shortened_near_the_cap else ())
    for f, cases in ((test_tcp_per_source_limit, PER_SOURCE_CASES),
                     (test_udp_later_replies, LATER_UDP_CASES),
                     (test_tcp_a_client_done_asking_still_gets_its_later_reply, [(b"eof",), (b"\x00\x00",)]),
                     (test_tcp_at_the_limit_the_longest_idle_connection_makes_room, EVICTION_CASES),
                     (test_tcp_idle_timeout_is_shortened_near_the_cap, UNDER_LOAD_CASES))
    for i, case in enumerate(cases)]


@pytest.mark.parametrize("scenario, args", UVLOOP_CASES)
def test_on_uvloop(scenario, args):
    uvloop = pytest.importorskip("uvloop")
    assert run(_on_loop(scenario, args, uvloop.Loop)) is True


async def _on_loop(scenario, args, loop_type) -> bool:
    assert isinstance(asyncio.get_running_loop(), loop_type)
    # the UDP listener the environment picks (batched where the extension works, as in production)
    udp_io = ("environment",) if "udp_io" in inspect.signature(scenario).parameters else ()
    await scenario(*args, *udp_io)
    return True


# --- tests/harness.py -------------------------------------------------------------------------

CHILD_SERVER = """
import asyncio, sys
from dnsd.common.lifecycle import run
from dnsd.protocol.server import DnsServer

def flip_qr(data, client_ip, over_tcp):
    return data[:2] + bytes([data[2] | 0x80]) + data[3:]

async def main(port, marker):
    server = DnsServer(flip_qr, [("127.0.0.1", port)])
    await server.start()
    print(marker, "serving on", server.addresses, file=sys.stderr, flush=True)
    await asyncio.sleep(60)  # stopped by SIGTERM long before this

run(main(int(sys.argv[1]), sys.argv[2]))
"""


CHILD_SERVER_FD_STARVED = """
import asyncio, sys
from dnsd.common.lifecycle import run
from dnsd.protocol.listening import ListenerSettings
from dnsd.protocol.server import DnsServer

def flip_qr(data, client_ip, over_tcp):
    return data[:2] + bytes([data[2] | 0x80]) + data[3:]

async def main(port):
    # caps far above what the open-files limit allows: accept() itself runs out of descriptors
    settings = ListenerSettings(tcp_max_connections=10000, tcp_max_connections_per_source=10000)
    server = DnsServer(flip_qr, [("127.0.0.1", port)], settings)
    await server.start()
    await asyncio.sleep(60)

if sys.argv[2] == "uvloop":
    run(main(int(sys.argv[1])))
else:
    asyncio.run(main(int(sys.argv[1])))
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to read CPU time")
@pytest.mark.parametrize("loop", ["asyncio", pytest.param("uvloop", marks=pytest.mark.slow)])
def test_accept_out_of_descriptors_pauses_instead_of_spinning(loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    port = harness.free_port()
    proc = harness.ServiceProcess(
        [sys.executable, "-c", CHILD_SERVER_FD_STARVED, str(port), loop],
        ready=lambda: harness.udp_answers("127.0.0.1", port), name="fd-starved",
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)))
    clients = []
    with proc:
        try:
            for _ in range(80):  # far more than 40 descriptors: the backlog holds the rest
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                sock.sendall(frame(query(500)))
                clients.append(sock)
            assert proc.wait_for_log("tcp_accept_failed", 3.0), proc.log_text()[-2000:]
            before = cpu_seconds(proc.pid)
            time.sleep(1.0)
            spent = cpu_seconds(proc.pid) - before
            assert spent < 0.1, f"{spent:.2f} s of CPU in 1 s while out of descriptors: spinning"
        finally:
            for sock in clients:
                sock.close()
        # descriptors are back: the listener serves again
        deadline = time.monotonic() + 3.0
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(frame(query(501)))
                    sock.settimeout(1.0)
                    data = sock.recv(4096)
                    if data[2:] == reply_to(query(501)):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "not serving TCP again after the clients left"
            time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_free_port_is_free_for_udp_and_tcp():
    port = harness.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        udp.bind(("127.0.0.1", port))
        tcp.bind(("127.0.0.1", port))


def test_service_process_ready_logs_and_stop():
    port = harness.free_port()
    marker = f"child-{uuid.uuid4().hex[:8]}"
    assert not harness.udp_answers("127.0.0.1", port, timeout=0.1)
    proc = harness.ServiceProcess(
        [sys.executable, "-c", CHILD_SERVER, str(port), marker],
        ready=lambda: harness.udp_answers("127.0.0.1", port),
        name="child-dns",
    )
    with proc:
        assert proc.pid > 0 and not gone(proc.pid)
        assert harness.udp_answers("127.0.0.1", port, qname="anything.test.", qtype="A")
        assert proc.wait_for_log(marker, timeout=2.0)
        assert "listening" in proc.log_text()  # structlog output is captured too
    assert gone(proc.pid)
    assert proc.returncode == -15  # SIGTERM
    assert marker in proc.log_text()  # the log survives stop()


def test_service_process_that_exits_early_reports_its_log():
    proc = harness.ServiceProcess(
        [sys.executable, "-c", "import sys; print('config is broken: line 3', file=sys.stderr); sys.exit(2)"],
        ready=lambda: False,
        name="early-exit",
    )
    started = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        proc.start()
    assert time.monotonic() - started < 5.0
    assert "exited with code 2" in str(info.value)
    assert "config is broken: line 3" in str(info.value)
    assert gone(proc.pid)


def test_service_process_never_ready_is_killed():
    proc = harness.ServiceProcess(
        [sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(30)"],
        ready=lambda: False,
        name="never-ready",
        timeout=0.5,
    )
    with pytest.raises(RuntimeError, match="not ready after 0.5 s") as info:
        with proc:
            pass
    assert "waiting" in str(info.value)
    assert gone(proc.pid)


def test_dnsd_helper_builds_the_command_line():
    proc = harness.dnsd("/tmp/some-config.yaml", port=5399, extra_args=["--log-level", "debug"])
    assert proc.port == 5399
    assert proc.argv == [sys.executable, "-m", "dnsd", "serve", "--config", "/tmp/some-config.yaml",
                         "--listen", "127.0.0.1:5399", "--admin-listen", f"127.0.0.1:{proc.admin_port}",
                         "--log-level", "debug"]
    assert isinstance(harness.dnsd("c.yaml").port, int)
