"""The UDP listener: each datagram goes to the handler, its reply (now or later) back through the rate
limiter; a reply is dropped, as the kernel would, while the send buffer is full."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import structlog

from dnsd.protocol.listening import ListenerContext, ListenerSettings

log = structlog.get_logger(__name__)


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
        if later.cancelled():
            return
        exc = later.exception()
        if exc is not None:
            self._context.handler_failed(addr[0], "udp", exc)
            return
        reply = later.result()
        if reply is None or self._transport is None:
            return
        if self._rrl_filter is not None:  # forwarded answers are limited like every other
            reply = self._rrl_filter(reply, addr[0])
            if reply is None:
                return
        if self._paused:
            suppressed = self._context.udp_drops.admit()
            if suppressed is not None:
                log.warning("udp_reply_dropped", client=addr[0], reason="send buffer full", suppressed=suppressed)
            return
        self._transport.sendto(reply, addr)

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

