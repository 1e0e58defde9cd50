"""The UDP listeners: each datagram goes to the handler, its reply (now or later) back through the rate
limiter; a reply is dropped, as the kernel would, while the send buffer is full. Two ways, chosen once
at start (batched_io_unavailable): BatchedUdp (Linux, the _fastudp extension built: recvmmsg/sendmmsg
batches, the handler's packet-cache hits answered inside the receiving C call) or UdpProtocol (the
asyncio datagram transport, one datagram per call: elsewhere, or GEOTM_UDP_BATCH=0)."""
from __future__ import annotations

import asyncio
import functools
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import structlog

from dnsd.protocol.listening import ListenerContext, ListenerSettings, PacketCacheOwner

try:
    from dnsd.protocol import _fastudp  # type: ignore[attr-defined]  # optional: built from _fastudp.c
except ImportError as exc:  # no compiler at install time, or not Linux: the asyncio path serves
    _fastudp = None
    _FASTUDP_MISSING = str(exc)

log = structlog.get_logger(__name__)

BATCH_ENV = "GEOTM_UDP_BATCH"  # "0": the asyncio path even where the extension works (tests run both)
BATCH = 64  # datagrams per recvmmsg / sendmmsg
BATCHES_PER_WAKEUP = 4  # then back to the loop, so one busy socket cannot starve the others


def batched_io_unavailable() -> str | None:
    """Why this process serves UDP through asyncio (UdpProtocol), or None: BatchedUdp."""
    if os.environ.get(BATCH_ENV, "1") == "0":
        return f"{BATCH_ENV}=0"
    if not sys.platform.startswith("linux"):
        return f"recvmmsg/sendmmsg are Linux only ({sys.platform})"
    if _fastudp is None:
        return f"dnsd.protocol._fastudp not built ({_FASTUDP_MISSING})"
    return None


def later_reply(later: asyncio.Future, client_ip: str, context: ListenerContext,
                rrl_filter: Callable[[bytes, str], bytes | None] | None) -> bytes | None:
    """The reply a handler's Future gave, through the rate limiter (forwarded answers are limited like
    every other); None: nothing to send (cancelled, failed: logged, silence, or limited)."""
    if later.cancelled():
        return None
    exc = later.exception()
    if exc is not None:
        context.handler_failed(client_ip, "udp", exc)
        return None
    reply = later.result()
    if reply is not None and rrl_filter is not None:
        reply = rrl_filter(reply, client_ip)
    return reply


class BatchedUdp:
    """One UDP socket of a DnsServer, read and written in batches through dnsd.protocol._fastudp: a
    packet-cache hit (PacketCacheOwner; not while a rate limiter is on, every reply must pass it) is
    answered in C, every other datagram goes to the handler as in UdpProtocol, and the replies of one
    batch leave in one sendmmsg; a reply that comes later (a Future) is sent alone when ready."""

    def __init__(self, sock: socket.socket, context: ListenerContext, cache_owner: PacketCacheOwner | None) -> None:
        assert _fastudp is not None
        self._sock: socket.socket | None = sock
        self._context = context
        self._handler = context.handler
        self._rrl_filter = context.rrl.filter if context.rrl is not None else None
        self._front = cache_owner if context.rrl is None else None  # hits bypass the handler only without RRL
        bounds = cache_owner.stats.latency_bounds if cache_owner is not None else ()
        self._channel = _fastudp.Channel(sock.fileno(), BATCH, bounds)
        self._loop = context.loop
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        channel = self._channel
        handler = self._handler
        rrl_filter = self._rrl_filter
        for _ in range(BATCHES_PER_WAKEUP):
            front = self._front
            try:
                if front is not None:
                    stats = front.stats
                    got = channel.receive(front.cache, stats.counts, stats.located, stats.latency_counts)
                else:
                    got = channel.receive(None, None, None, None)
            except OSError as exc:
                log.debug("udp_error", error=str(exc))
                return
            if got is None:  # nothing waiting (EAGAIN)
                return
            misses, hits, hit_seconds, received = got
            if hits:
                stats.latency_sum += hit_seconds
            replies = []
            for slot, data, ip, port in misses:
                try:
                    reply = handler(data, ip, False)
                except Exception as exc:  # the handler must not raise; if it does, keep serving
                    self._context.handler_failed(ip, "udp", exc)
                    continue
                if reply is None:
                    continue
                if type(reply) is not bytes:  # a Future: the reply comes later (the handler contract)
                    reply.add_done_callback(functools.partial(self._send_later, addr=(ip, port)))
                    continue
                if rrl_filter is not None:
                    reply = rrl_filter(reply, ip)
                    if reply is None:
                        continue
                replies.append((slot, reply))
            dropped = channel.send(replies)
            if dropped:
                self._dropped(None, dropped)  # the last replies of the batch, to whichever clients
            if received < BATCH:  # the socket is drained: spare the recvmmsg that would say EAGAIN
                return

    def _send_later(self, later: asyncio.Future, addr: tuple[str, int]) -> None:
        """A reply that was not ready when its datagram came: the same steps as _readable's."""
        reply = later_reply(later, addr[0], self._context, self._rrl_filter)
        if reply is None or self._sock is None:
            return
        try:
            self._sock.sendto(reply, addr)
        except BlockingIOError:
            self._dropped(addr[0], 1)
        except OSError as exc:
            log.debug("udp_error", error=str(exc))

    def _dropped(self, client: str | None, replies: int) -> None:
        suppressed = self._context.udp_drops.admit()
        if suppressed is not None:
            log.warning("udp_reply_dropped", client=client, reason="send buffer full", replies=replies,
                        suppressed=suppressed)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._loop.remove_reader(sock.fileno())
        self._channel.close()
        sock.close()
        if not self.closed.done():
            self.closed.set_result(None)


class UdpProtocol(asyncio.DatagramProtocol):
    """One UDP socket of a DnsServer."""

    def __init__(self, context: ListenerContext) -> None:
        self._context = context
        self._handler = context.handler
        self._rrl_filter = context.rrl.filter if context.rrl is not None else None
        self._transport: asyncio.DatagramTransport | None = None
        self._paused = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        ip = addr[0]
        try:
            reply = self._handler(data, ip, False)
        except Exception as exc:  # the handler must not raise; if it does, keep serving
            self._context.handler_failed(ip, "udp", exc)
            return
        if reply is None or self._transport is None:
            return
        if type(reply) is not bytes:  # a Future: the reply comes later (the handler contract)
            reply.add_done_callback(lambda later: self._send_later(later, addr))
            return
        if self._rrl_filter is not None:  # after the handler, so packet-cache hits are limited too
            reply = self._rrl_filter(reply, ip)
            if reply is None:
                return
        if self._paused:
            # The kernel send buffer is full and the transport is buffering: drop, as the
            # kernel would, rather than let the backlog grow without bound.
            suppressed = self._context.udp_drops.admit()
            if suppressed is not None:
                log.warning("udp_reply_dropped", client=ip, reason="send buffer full", suppressed=suppressed)
            return
        self._transport.sendto(reply, addr)

    def _send_later(self, later: asyncio.Future, addr: tuple[Any, ...]) -> None:
        """A reply that was not ready when the datagram came: the same steps as datagram_received's
        (written out there, on the hot path)."""
        reply = later_reply(later, addr[0], self._context, self._rrl_filter)
        if reply is None or self._transport is None:
            return
        if self._paused:
            suppressed = self._context.udp_drops.admit()
            if suppressed is not None:
                log.warning("udp_reply_dropped", client=addr[0], reason="send buffer full", suppressed=suppressed)
            return
        self._transport.sendto(reply, addr)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # connection_lost follows, and with it `closed`

    def error_received(self, exc: Exception) -> None:
        # Typically ICMP port unreachable from a client that went away; nothing to do.
        log.debug("udp_error", error=str(exc))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)


def udp_socket(family: int, sockaddr: tuple[Any, ...], settings: ListenerSettings) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if settings.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if settings.udp_receive_buffer > 0:
            _set_receive_buffer(sock, settings.udp_receive_buffer)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    # SO_RCVBUFFORCE (Linux, CAP_NET_ADMIN) may exceed net.core.rmem_max; else SO_RCVBUF, capped.
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
        except OSError:
            pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError as exc:
        log.warning("udp_receive_buffer_not_set", requested=size, error=str(exc))
        return
    effective = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if effective < size:  # Linux reports twice the granted size, so this means capped
        log.warning("udp_receive_buffer_capped", requested=size, effective=effective)

