"""DNS listeners: UDP and TCP sockets that move bytes between clients and a query handler; lifecycle only, no DNS logic.

Each listen address gets one UDP socket (dnsd.protocol.udp: batched through the _fastudp extension
where it works, else the asyncio transport; chosen at start and logged as `udp_io`) and one TCP
listener (dnsd.protocol.tcp: framing, timeouts, caps) on the same port. Every message received is given to a synchronous handler,
``handler(query, client_ip, over_tcp)``, whose return value (bytes, or None for silence, or a Future of
either when the reply comes later: dnsd.protocol.listening) is sent back unchanged (a batched UDP listener answers the handler's packet-cache hits itself, with the
same bytes: dnsd.protocol.listening.PacketCacheOwner). Everything
DNS-specific (FORMERR, truncation, EDNS sizes) belongs to the handler. The one exception: with a rate
limiter (dnsd.protocol.rrl), a UDP reply may be dropped or sent slipped (TC=1); TCP replies never are.
"""
from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from dnsd.protocol.listening import Handler, ListenerContext, ListenerSettings, PacketCacheOwner, format_address
from dnsd.protocol.tcp import TcpConnections, TcpListener, TcpStats, tcp_socket
from dnsd.protocol.udp import BatchedUdp, UdpProtocol, batched_io_unavailable, udp_socket

if TYPE_CHECKING:
    from dnsd.protocol.rrl import ResponseRateLimiter

log = structlog.get_logger(__name__)

_PORT_ZERO_ATTEMPTS = 20  # port 0: tries to find a port free for both UDP and TCP


def _listen_error(host: str, port: int, proto: str, exc: OSError) -> OSError:
    err = OSError(f"cannot listen on {format_address(host, port)} ({proto}): {exc}")
    err.errno = exc.errno
    return err


def _with_port(sockaddr: tuple[Any, ...], port: int) -> tuple[Any, ...]:
    return (sockaddr[0], port, *sockaddr[2:])


class DnsServer:
    """UDP and TCP listeners on a set of addresses, all feeding one handler."""

    def __init__(
        self,
        handler: Handler,
        listen: Sequence[tuple[str, int]],
        settings: ListenerSettings = ListenerSettings(),
        rate_limiter: ResponseRateLimiter | None = None,
        packet_cache: PacketCacheOwner | None = None,
    ) -> None:
        """packet_cache: the handler's owner, whose packet-cache hits a batched UDP listener answers
        itself (dnsd.protocol.listening.PacketCacheOwner); None: every datagram goes to the handler."""
        if not listen:
            raise ValueError("DnsServer needs at least one listen address")
        self._handler = handler
        self._listen = [(str(host), int(port)) for host, port in listen]
        for host, port in self._listen:
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"invalid port in listen address {format_address(host, port)}")
        self._settings = settings
        self._rate_limiter = rate_limiter
        self._packet_cache = packet_cache
        self._batched = False  # UDP through BatchedUdp (decided at start)
        # while started: the open TCP connections, and through them what all listeners share
        self._connections: TcpConnections | None = None
        self._addresses: list[tuple[str, int]] = []
        self._udp: list[BatchedUdp | UdpProtocol] = []
        self._tcp: list[TcpListener] = []

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs, one per listen entry, host as given; empty before start()."""
        return list(self._addresses)

    @property
    def settings(self) -> ListenerSettings:
        return self._settings

    @property
    def tcp_connections(self) -> int:
        """Open TCP connections right now."""
        return len(self._connections.connections) if self._connections else 0

    def tcp_stats(self) -> TcpStats:
        """TCP admission counters since start, and the open connections and sources now."""
        return self._connections.snapshot() if self._connections else TcpStats()

    async def start(self) -> None:
        if self._connections is not None:
            raise RuntimeError("DnsServer already started")
        self._connections = TcpConnections(ListenerContext(self._handler, self._settings, self._rate_limiter))
        self._addresses = []
        unavailable = batched_io_unavailable()
        self._batched = unavailable is None
        log.info("udp_io", batched=self._batched, why=unavailable or "recvmmsg/sendmmsg through dnsd.protocol._fastudp",
                 packet_cache_in_c=self._batched and self._packet_cache is not None and self._rate_limiter is None)
        try:
            for host, port in self._listen:
                bound = await self._bind(host, port)
                self._addresses.append((host, bound))
        except BaseException:
            await self._close_all(grace=0.0)
            self._connections = None
            self._addresses = []
            raise

    async def _bind(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        connections = self._connections
        assert connections is not None
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise _listen_error(host, port, "udp", exc) from exc
        family, _, _, _, sockaddr = infos[0]
        attempts = _PORT_ZERO_ATTEMPTS if port == 0 else 1
        for attempt in range(attempts):
            try:
                udp_sock = udp_socket(family, sockaddr, self._settings)
            except OSError as exc:
                raise _listen_error(host, port, "udp", exc) from exc
            bound = udp_sock.getsockname()[1]
            try:
                tcp_sock = tcp_socket(family, _with_port(sockaddr, bound), self._settings)
            except OSError as exc:
                udp_sock.close()
                if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue  # port 0: UDP got a port whose TCP twin is taken; pick another
                raise _listen_error(host, bound, "tcp", exc) from exc
            break
        udp: BatchedUdp | UdpProtocol
        try:
            if self._batched:
                udp = BatchedUdp(udp_sock, connections.context, self._packet_cache)
            else:
                _, udp = await loop.create_datagram_endpoint(lambda: UdpProtocol(connections.context), sock=udp_sock)
        except BaseException as exc:
            udp_sock.close()
            tcp_sock.close()
            if isinstance(exc, OSError):
                raise _listen_error(host, bound, "udp", exc) from exc
            raise
        self._udp.append(udp)
        log.info("listening", transport="udp", address=format_address(host, bound))
        try:
            listener = TcpListener(tcp_sock, connections)
        except BaseException as exc:
            tcp_sock.close()
            if isinstance(exc, OSError):
                raise _listen_error(host, bound, "tcp", exc) from exc
            raise
        self._tcp.append(listener)
        log.info("listening", transport="tcp", address=format_address(host, bound))
        return bound

    async def stop(self) -> None:
        """Close the listeners, then the open TCP connections: replies already written get
        up to tcp_write_timeout to go out, then connections are aborted."""
        if self._connections is None:
            return
        await self._close_all(grace=self._settings.tcp_write_timeout)
        self._connections = None
        log.info("stopped", addresses=[format_address(h, p) for h, p in self._addresses])

    async def _close_all(self, grace: float) -> None:
        table = self._connections
        assert table is not None
        servers, self._tcp = self._tcp, []
        udp, self._udp = self._udp, []
        for server in servers:
            server.close()
        for listener in udp:
            listener.close()
        for conn in list(table.connections):
            conn.shutdown()
        if table.connections:
            try:
                async with asyncio.timeout(grace):
                    await table.no_connections.wait()
            except TimeoutError:
                pass
        for conn in list(table.connections):
            conn.kill()
        table.close()
        waits: list[Any] = [listener.closed for listener in udp]
        waits += [server.wait_closed() for server in servers]
        if table.connections:
            waits.append(table.no_connections.wait())
        if waits:
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.gather(*waits, return_exceptions=True)
            except TimeoutError:
                log.warning("stop_incomplete", open_connections=len(table.connections))

