"""One query to one upstream over UDP or TCP: a fresh socket each time (so a kernel-chosen random source
port), and only the reply that comes from the upstream and matches the query is taken; anything else
is counted as mismatched and the wait goes on. The caller bounds the wait (asyncio.timeout)."""
from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from dnsd.forward.upstreams import Upstream

_U16 = struct.Struct("!H")


def _socket(upstream: Upstream, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in upstream.host else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setblocking(False)
    return sock


class _ReplyWaiter(asyncio.DatagramProtocol):
    def __init__(self, upstream: Upstream, accept: Callable[[bytes], bool]) -> None:
        self.upstream = upstream
        self.accept = accept
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        if self.reply.done():
            return
        if self.upstream.sent_from(addr) and self.accept(data):
            self.reply.set_result(data)
        else:
            self.upstream.stats.errors["mismatched"] += 1

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable: nobody listens
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("UDP socket closed"))


async def udp(upstream: Upstream, packet: bytes, accept: Callable[[bytes], bool]) -> bytes:
    """Send `packet` from a new connected UDP socket (the kernel then drops datagrams from any other
    address; the sender is checked again all the same) and return the first reply accept() takes.
    OSError when the upstream cannot be reached."""
    sock = _socket(upstream, socket.SOCK_DGRAM)
    try:
        sock.connect((upstream.host, upstream.port))  # UDP: no packet sent, never blocks
        transport, waiter = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _ReplyWaiter(upstream, accept), sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        transport.sendto(packet)
        return await waiter.reply
    finally:
        transport.close()


async def tcp(upstream: Upstream, packet: bytes, accept: Callable[[bytes], bool]) -> bytes:
    """The same over a new TCP connection (RFC 7766 length prefix). A reply accept() refuses is
    skipped and the next one read; OSError (ConnectionError when the upstream closes early)."""
    sock = _socket(upstream, socket.SOCK_STREAM)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (upstream.host, upstream.port))
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(_U16.pack(len(packet)) + packet)
        while True:
            size = _U16.unpack(await reader.readexactly(2))[0]
            reply = await reader.readexactly(size)
            if accept(reply):
                return reply
            upstream.stats.errors["mismatched"] += 1
    except asyncio.IncompleteReadError:
        raise ConnectionError("upstream closed the TCP connection before replying") from None
    finally:
        writer.close()
