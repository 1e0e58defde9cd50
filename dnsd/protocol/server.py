"""DNS listeners: UDP and TCP sockets that move bytes between clients and a query handler; lifecycle only, no DNS logic.

Each listen address gets one UDP socket and one TCP listener on the same port. Every message
received is given to a synchronous handler, ``handler(query, client_ip, over_tcp)``, whose
return value (bytes, or None for silence) is sent back unchanged. Everything DNS-specific
(FORMERR, truncation, EDNS sizes) belongs to the handler. The one exception: with a rate limiter
(dnsd.protocol.rrl), a UDP reply may be dropped or sent slipped (TC=1); TCP replies never are.

TCP (RFC 7766 / RFC 1035 4.2.2): each message is preceded by a two-byte length. Pipelined
queries are answered in order. Connections are asyncio Protocols, so a slow or stalled client
costs one buffer and two timers, never a blocked task that others wait on:

* idle timeout: a connection that does not complete a message within ``tcp_idle_timeout``
  of its previous one (or of being opened) is closed, so a partial length prefix followed by
  silence cannot pin a connection forever;
* write timeout: when replies pile up because the client does not read them, we stop reading
  its queries (back-pressure) and drop the connection unless it catches up within
  ``tcp_write_timeout``; memory per connection stays bounded;
* per-source cap: one source (an IPv4 address, an IPv6 /56 by default: see ``source_key``) holds
  at most ``tcp_max_connections_per_source`` connections; beyond that its new ones are closed at
  once, so one client cannot take the slots every other client needs for truncated answers;
* global cap and load shedding (RFC 7766 6.2.3: servers MAY close idle connections and use very
  short idle timeouts under load): at ``tcp_max_connections`` a new connection closes the one that
  has gone longest without a complete query and takes its slot; from 3/4 of the cap on, connections
  idle for ``tcp_idle_timeout_under_load`` are closed.

Connections are accepted here, not by ``loop.create_server``: the decision to keep or close one is
made right after accept(), in batches of at most ``_ACCEPT_BATCH``, so DNS clients never hold more
descriptors than the caps (plus that batch) and the rest of the process (health feed, admin API,
state files) keeps the descriptors it needs. An accept() that fails for want of descriptors pauses
accepting briefly instead of spinning on a listener that stays readable.
"""
from __future__ import annotations

import asyncio
import errno
import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import structlog

from dnsd.common.logs import LogGate

if TYPE_CHECKING:
    from dnsd.protocol.rrl import ResponseRateLimiter

log = structlog.get_logger(__name__)

Handler = Callable[[bytes, str, bool], bytes | None]

_MAX_TCP_MESSAGE = 0xFFFF
_TCP_FLUSH_BYTES = 16 * 1024  # batch pipelined replies into writes of about this size
_PORT_ZERO_ATTEMPTS = 20  # port 0: tries to find a port free for both UDP and TCP
_TCP_BACKLOG = 1024
_ACCEPT_BATCH = 16  # connections accepted per readiness callback: bounds descriptors taken before we decide
_ACCEPT_PAUSE = 0.1  # after EMFILE/ENFILE: seconds before trying accept() again
_LOAD_FRACTION = 0.75  # "near the limit": the short idle timeout applies from this share of tcp_max_connections
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_MISSING = object()


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    tcp_idle_timeout: float = 10.0  # close a TCP connection idle this long (RFC 7766 suggests seconds)
    tcp_idle_timeout_under_load: float = 1.0  # ...or this long once connections reach 3/4 of the cap
    tcp_write_timeout: float = 5.0  # a client that does not read its replies is dropped after this
    tcp_max_connections: int = 1024  # at this, a new connection replaces the longest-idle one
    tcp_max_connections_per_source: int = 16  # beyond this, a source's new connections are closed at once
    tcp_source_prefix_v4: int = 32  # what counts as one source: IPv4 addresses aggregated to this prefix
    tcp_source_prefix_v6: int = 56  # ... and IPv6 addresses to this one
    udp_receive_buffer: int = 4 * 1024 * 1024  # SO_RCVBUF: avoid kernel drops in bursts
    reuse_port: bool = False  # SO_REUSEPORT, so N worker processes can share an address

    def __post_init__(self) -> None:
        for name in ("tcp_idle_timeout", "tcp_idle_timeout_under_load", "tcp_write_timeout",
                     "tcp_max_connections", "tcp_max_connections_per_source"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ListenerSettings.{name} must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.tcp_source_prefix_v4 <= 32:
            raise ValueError(f"ListenerSettings.tcp_source_prefix_v4 must be 0..32, got {self.tcp_source_prefix_v4!r}")
        if not 0 <= self.tcp_source_prefix_v6 <= 128:
            raise ValueError(f"ListenerSettings.tcp_source_prefix_v6 must be 0..128, got {self.tcp_source_prefix_v6!r}")
        if self.udp_receive_buffer < 0:
            raise ValueError(f"ListenerSettings.udp_receive_buffer must be >= 0, got {self.udp_receive_buffer!r}")

    @property
    def tcp_load_threshold(self) -> int:
        """Open connections from which the short idle timeout applies."""
        return max(1, math.ceil(self.tcp_max_connections * _LOAD_FRACTION))


_V4_MAPPED = bytes(10) + b"\xff\xff"


def source_key(ip: str, prefix_v4: int = 32, prefix_v6: int = 56) -> str:
    """The source a TCP client counts against: its address cut to the prefix, as text ('192.0.2.7/32',
    '2001:db8:0:100::/56'). An IPv4-mapped IPv6 address counts as its IPv4 address. Integer masks on
    packed addresses: the ipaddress module would cost more than the rest of accepting a connection."""
    try:
        if ":" not in ip:
            packed = socket.inet_pton(socket.AF_INET, ip)
        else:
            packed = socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0])
            if packed[:12] == _V4_MAPPED:
                packed = packed[12:]
    except OSError:
        return ip  # not an address (unknown peer): its own source
    if len(packed) == 4:
        if prefix_v4 == 32:
            return f"{socket.inet_ntop(socket.AF_INET, packed)}/32"
        masked = int.from_bytes(packed, "big") & ~((1 << (32 - prefix_v4)) - 1)
        return f"{socket.inet_ntop(socket.AF_INET, masked.to_bytes(4, 'big'))}/{prefix_v4}"
    masked = int.from_bytes(packed, "big") & ~((1 << (128 - prefix_v6)) - 1)
    return f"{socket.inet_ntop(socket.AF_INET6, masked.to_bytes(16, 'big'))}/{prefix_v6}"


def format_address(host: str, port: int) -> str:
    """'127.0.0.1:53' or '[::1]:53'."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class TcpStats:
    """What the TCP admission did since start (counters) and does now (gauges); for metrics and tests."""

    accepted: int = 0
    refused_per_source: int = 0  # the source already held tcp_max_connections_per_source
    refused_full: int = 0  # at tcp_max_connections with no established connection to replace
    evicted: int = 0  # longest-idle connections closed to make room for a new one
    closed_under_load: int = 0  # idle longer than tcp_idle_timeout_under_load while near the cap
    accept_paused: int = 0  # accept() failed for want of descriptors (EMFILE/ENFILE): paused
    open: int = 0
    sources: int = 0
    under_load: bool = False


class _Shared:
    """What all listeners of one DnsServer share: the handler, the settings, the UDP rate limiter, and
    the open TCP connections in the order of their last complete query (least recent first)."""

    __slots__ = ("handler", "settings", "loop", "connections", "per_source", "no_connections", "stats",
                 "refusals", "evictions", "load_log", "normal_log", "failures", "udp_drops", "accept_errors",
                 "_sweeper", "rrl")

    def __init__(self, handler: Handler, settings: ListenerSettings,
                 rrl: ResponseRateLimiter | None = None) -> None:
        self.handler = handler
        self.settings = settings
        self.rrl = rrl  # UDP replies only: TCP is the way around the limit for real resolvers
        self.loop = asyncio.get_running_loop()
        self.connections: dict[_TcpConnection, None] = {}  # insertion order = least recently active first
        self.per_source: dict[str, int] = {}
        self.no_connections = asyncio.Event()
        self.no_connections.set()
        self.stats = TcpStats()
        self.refusals = LogGate(interval=1.0, burst=1)
        self.evictions = LogGate(interval=1.0, burst=1)
        self.load_log = LogGate(interval=10.0, burst=1)  # entering and leaving load may flap
        self.normal_log = LogGate(interval=10.0, burst=1)
        self.failures = LogGate(interval=1.0, burst=10)
        self.udp_drops = LogGate(interval=1.0, burst=1)
        self.accept_errors = LogGate(interval=1.0, burst=1)
        self._sweeper: asyncio.TimerHandle | None = None

    # -- admission (right after accept) ----------------------------------------------------

    def admit(self, ip: str) -> _TcpConnection | None:
        """A slot for a new connection from `ip`, or None when it must be closed at once."""
        settings = self.settings
        source = source_key(ip, settings.tcp_source_prefix_v4, settings.tcp_source_prefix_v6)
        held = self.per_source.get(source, 0)
        if held >= settings.tcp_max_connections_per_source:
            self.stats.refused_per_source += 1
            self._refused(ip, source, "per-source limit", settings.tcp_max_connections_per_source)
            return None
        if len(self.connections) >= settings.tcp_max_connections and not self._evict_longest_idle(ip):
            self.stats.refused_full += 1
            self._refused(ip, source, "connection limit", settings.tcp_max_connections)
            return None
        conn = _TcpConnection(self, ip, source)
        self.connections[conn] = None
        self.per_source[source] = held + 1
        self.no_connections.clear()
        self.stats.accepted += 1
        if len(self.connections) >= settings.tcp_load_threshold and self._sweeper is None:
            self._enter_load()
        return conn

    def release(self, conn: _TcpConnection) -> None:
        """The connection no longer holds a slot (closed, evicted, or never established)."""
        if self.connections.pop(conn, _MISSING) is _MISSING:
            return
        held = self.per_source.get(conn.source, 0) - 1
        if held > 0:
            self.per_source[conn.source] = held
        else:
            self.per_source.pop(conn.source, None)
        if not self.connections:
            self.no_connections.set()

    def touch(self, conn: _TcpConnection) -> None:
        """A complete query arrived: the connection becomes the most recently active."""
        connections = self.connections
        if connections.pop(conn, _MISSING) is not _MISSING:
            connections[conn] = None

    def _refused(self, ip: str, source: str, reason: str, limit: int) -> None:
        suppressed = self.refusals.admit()
        if suppressed is not None:
            log.warning("tcp_connection_refused", client=ip, source=source, reason=reason, limit=limit,
                        open=len(self.connections), suppressed=suppressed)

    def _evict_longest_idle(self, newcomer: str) -> bool:
        for conn in self.connections:
            if conn.established:
                idle = self.loop.time() - conn.last_active
                self.stats.evicted += 1
                suppressed = self.evictions.admit()
                if suppressed is not None:
                    log.info("tcp_connection_evicted", client=conn.ip, idle=round(idle, 3), for_client=newcomer,
                             reason="connection limit reached: longest idle closed", suppressed=suppressed)
                conn.evict()
                return True
        return False  # every slot is still being set up: nothing to replace

    # -- the short idle timeout near the cap (RFC 7766 6.2.3) -----------------------------

    def _enter_load(self) -> None:
        settings = self.settings
        self.stats.under_load = True
        suppressed = self.load_log.admit()
        if suppressed is not None:
            log.warning("tcp_under_load", open=len(self.connections), limit=settings.tcp_max_connections,
                        idle_timeout=settings.tcp_idle_timeout_under_load, suppressed=suppressed)
        self._sweeper = self.loop.call_later(self._sweep_period(), self._sweep)

    def _sweep_period(self) -> float:
        return max(0.02, min(1.0, self.settings.tcp_idle_timeout_under_load / 4))

    def _sweep(self) -> None:
        """Close connections idle for tcp_idle_timeout_under_load, least recently active first, while
        the server stays near its cap."""
        self._sweeper = None
        if len(self.connections) < self.settings.tcp_load_threshold:
            self.stats.under_load = False
            suppressed = self.normal_log.admit()
            if suppressed is not None:
                log.info("tcp_load_normal", open=len(self.connections),
                         idle_timeout=self.settings.tcp_idle_timeout, suppressed=suppressed)
            return
        cutoff = self.loop.time() - self.settings.tcp_idle_timeout_under_load
        for conn in list(self.connections):
            if conn.last_active > cutoff:
                break  # ordered by last activity: the rest are more recent
            if conn.close_if_idle():
                self.stats.closed_under_load += 1
        self._sweeper = self.loop.call_later(self._sweep_period(), self._sweep)

    def snapshot(self) -> TcpStats:
        return replace(self.stats, open=len(self.connections), sources=len(self.per_source))

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def handler_failed(self, client: str, transport: str, exc: BaseException) -> None:
        suppressed = self.failures.admit()
        if suppressed is not None:
            log.error(
                "handler_failed",
                client=client,
                transport=transport,
                error=repr(exc),
                suppressed=suppressed,
                exc_info=exc,
            )


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._handler = shared.handler
        self._rrl_filter = shared.rrl.filter if shared.rrl is not None else None
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
            self._shared.handler_failed(ip, "udp", exc)
            return
        if reply is None or self._transport is None:
            return
        if self._rrl_filter is not None:  # after the handler, so packet-cache hits are limited too
            reply = self._rrl_filter(reply, ip)
            if reply is None:
                return
        if self._paused:
            # The kernel send buffer is full and the transport is buffering: drop, as the
            # kernel would, rather than let the backlog grow without bound.
            suppressed = self._shared.udp_drops.admit()
            if suppressed is not None:
                log.warning("udp_reply_dropped", client=ip, reason="send buffer full", suppressed=suppressed)
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


class _TcpConnection(asyncio.Protocol):
    """One TCP client: framing, pipelining, idle and write timeouts. Created by _Shared.admit, which
    has already given it a slot; it gives the slot back (release) when it is lost or evicted."""

    __slots__ = (
        "_shared",
        "_loop",
        "_transport",
        "ip",
        "source",
        "last_active",
        "_buffer",
        "_deadline",
        "_idle_timer",
        "_write_timer",
        "_paused",
        "_eof",
        "_done",
    )

    def __init__(self, shared: _Shared, ip: str, source: str) -> None:
        self._shared = shared
        self._loop = shared.loop
        self._transport: asyncio.Transport | None = None
        self.ip = ip
        self.source = source
        self.last_active = self._loop.time()  # accept, then each complete query
        self._buffer = bytearray()
        self._deadline = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._paused = False  # our replies are not being read: we stopped reading queries
        self._eof = False  # the client shut down its sending side
        self._done = False  # no more messages will be processed (closing)

    @property
    def established(self) -> bool:
        return self._transport is not None and not self._done

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._done:  # evicted or the server stopped while the transport was being set up
            transport.abort()
            return
        self._transport = transport  # type: ignore[assignment]
        self._deadline = self._loop.time() + self._shared.settings.tcp_idle_timeout
        self._idle_timer = self._loop.call_at(self._deadline, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self._done or self._transport is None:
            return
        self._buffer += data
        if not self._paused:
            self._process()

    def eof_received(self) -> bool:
        self._eof = True
        if not self._paused and self._transport is not None:
            # Everything complete has been answered; close once the replies are flushed.
            self._finish()
        return True  # we close ourselves (after the replies are out)

    def pause_writing(self) -> None:
        transport = self._transport
        if transport is None or self._paused:
            return
        self._paused = True
        if not transport.is_closing():
            transport.pause_reading()
        self._arm_write_timer()

    def resume_writing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._done:
            return  # closing: the pending replies must still go out before the write timer fires
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._process()
        if self._paused or self._done:
            return
        if self._eof:
            self._finish()
        else:
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._transport = None
        self._shared.release(self)
        self._buffer = bytearray()
        self._done = True

    # -- load shedding -----------------------------------------------------------------

    def evict(self) -> None:
        """Close now to give the slot to a new connection: the slot is free at once, the socket a
        moment later. Nothing is owed: it has been idle longer than any other connection."""
        self._done = True
        self._shared.release(self)
        if self._transport is not None:
            self._transport.abort()

    def close_if_idle(self) -> bool:
        """Under load: close unless our replies are backed up (the write timeout governs those)."""
        if not self.established or self._paused:
            return False
        log.debug("tcp_idle_timeout", client=self.ip, under_load=True)
        self._finish()
        return True

    # -- internals ---------------------------------------------------------------------

    def _process(self) -> None:
        """Answer every complete message in the buffer, in order, until done or paused."""
        transport = self._transport
        if transport is None:
            return
        buf = self._buffer
        end = len(buf)
        handler = self._shared.handler
        ip = self.ip
        pos = 0
        completed = False
        out: list[bytes] = []
        out_size = 0
        while end - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            if length == 0:  # a zero-length message: the client is done with us
                self._done = True
                break
            if end - pos - 2 < length:
                break
            query = bytes(buf[pos + 2 : pos + 2 + length])
            pos += 2 + length
            completed = True
            try:
                reply = handler(query, ip, True)
            except Exception as exc:  # the handler must not raise; if it does, keep serving
                self._shared.handler_failed(ip, "tcp", exc)
                continue
            if reply is None:
                continue
            if len(reply) > _MAX_TCP_MESSAGE:
                log.error("reply_too_large", client=ip, size=len(reply))
                continue
            out.append(len(reply).to_bytes(2, "big"))
            out.append(reply)
            out_size += 2 + len(reply)
            if out_size >= _TCP_FLUSH_BYTES:
                transport.write(b"".join(out))
                out.clear()
                out_size = 0
                if self._paused or transport.is_closing():
                    break
        if out:
            transport.write(b"".join(out))
        if completed:
            self.last_active = now = self._loop.time()
            self._deadline = now + self._shared.settings.tcp_idle_timeout
            self._shared.touch(self)
        if self._done:
            self._finish()
        elif pos:
            del buf[:pos]

    def _finish(self) -> None:
        """Stop processing and close once the pending replies are written."""
        self._done = True
        self._buffer = bytearray()
        transport = self._transport
        if transport is not None:
            transport.close()
            if transport.get_write_buffer_size():
                # close() waits for the buffer to drain; a client that never reads must not
                # keep the connection (and its slot) forever.
                self._arm_write_timer()

    def _arm_write_timer(self) -> None:
        if self._write_timer is None:
            self._write_timer = self._loop.call_later(self._shared.settings.tcp_write_timeout, self._on_write_timeout)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._transport is None or self._done:
            return
        now = self._loop.time()
        if self._paused:
            # Not the client's idleness: we stopped reading. The write timeout governs.
            self._deadline = now + self._shared.settings.tcp_idle_timeout
        if now < self._deadline:
            self._idle_timer = self._loop.call_at(self._deadline, self._check_idle)
            return
        log.debug("tcp_idle_timeout", client=self.ip)
        self._finish()

    def _on_write_timeout(self) -> None:
        self._write_timer = None
        if self._transport is None:
            return
        log.info("tcp_write_timeout", client=self.ip, pending=self._transport.get_write_buffer_size())
        self._done = True
        self._transport.abort()

    def shutdown(self) -> None:
        """Server stopping: close, letting already-written replies go out."""
        if self._transport is not None:
            self._finish()
        else:
            self._done = True  # still being set up: connection_made will abort it

    def kill(self) -> None:
        self._done = True
        if self._transport is not None:
            self._transport.abort()
        else:
            self._shared.release(self)


class _TcpListener:
    """One listening TCP socket: accept(), admit or close at once, hand admitted sockets to the loop."""

    def __init__(self, sock: socket.socket, shared: _Shared) -> None:
        self._sock = sock
        self._shared = shared
        self._loop = shared.loop
        self._setting_up: dict[asyncio.Task[Any], tuple[socket.socket, _TcpConnection]] = {}
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        shared = self._shared
        accept, family = self._sock._accept, self._sock.family  # socket.accept() minus its per-call enum lookups
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause(exc)
                    return
                continue  # ECONNABORTED and the like: that client is already gone
            protocol = shared.admit(addr[0] if isinstance(addr, tuple) and addr else "?")
            if protocol is None:
                os.close(fd)
                continue
            conn = socket.socket(family, socket.SOCK_STREAM, 0, fileno=fd)
            # the loop makes it non-blocking and sets TCP_NODELAY, as for the connections it accepts itself
            task = self._loop.create_task(self._loop.connect_accepted_socket(lambda p=protocol: p, conn))
            self._setting_up[task] = (conn, protocol)
            task.add_done_callback(self._set_up)

    def _set_up(self, task: asyncio.Task[Any]) -> None:
        conn, protocol = self._setting_up.pop(task)
        if task.cancelled() or task.exception() is not None:
            protocol.kill()
            conn.close()

    def _pause(self, exc: OSError) -> None:
        """Out of descriptors: the listener stays readable, so stop watching it for a moment."""
        self._shared.stats.accept_paused += 1
        suppressed = self._shared.accept_errors.admit()
        if suppressed is not None:
            log.error("tcp_accept_failed", error=str(exc), open=len(self._shared.connections),
                      effect=f"not accepting for {_ACCEPT_PAUSE}s", suppressed=suppressed)
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(_ACCEPT_PAUSE, self._watch_again)

    def _watch_again(self) -> None:
        self._resume = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for task in list(self._setting_up):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._setting_up:
            await asyncio.gather(*self._setting_up, return_exceptions=True)


def _listen_error(host: str, port: int, proto: str, exc: OSError) -> OSError:
    err = OSError(f"cannot listen on {format_address(host, port)} ({proto}): {exc}")
    err.errno = exc.errno
    return err


def _udp_socket(family: int, sockaddr: tuple[Any, ...], settings: ListenerSettings) -> socket.socket:
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


def _tcp_socket(family: int, sockaddr: tuple[Any, ...], settings: ListenerSettings) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if hasattr(socket, "SO_REUSEADDR"):  # rebind while old connections sit in TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if settings.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(_TCP_BACKLOG)  # here, so that a port conflict shows up now
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


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
    ) -> None:
        if not listen:
            raise ValueError("DnsServer needs at least one listen address")
        self._handler = handler
        self._listen = [(str(host), int(port)) for host, port in listen]
        for host, port in self._listen:
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"invalid port in listen address {format_address(host, port)}")
        self._settings = settings
        self._rate_limiter = rate_limiter
        self._shared: _Shared | None = None
        self._addresses: list[tuple[str, int]] = []
        self._udp: list[tuple[asyncio.DatagramTransport, _UdpProtocol]] = []
        self._tcp: list[_TcpListener] = []

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
        return len(self._shared.connections) if self._shared else 0

    def tcp_stats(self) -> TcpStats:
        """TCP admission counters since start, and the open connections and sources now."""
        return self._shared.snapshot() if self._shared else TcpStats()

    async def start(self) -> None:
        if self._shared is not None:
            raise RuntimeError("DnsServer already started")
        self._shared = _Shared(self._handler, self._settings, self._rate_limiter)
        self._addresses = []
        try:
            for host, port in self._listen:
                bound = await self._bind(host, port)
                self._addresses.append((host, bound))
        except BaseException:
            await self._close_all(grace=0.0)
            self._shared = None
            self._addresses = []
            raise

    async def _bind(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        shared = self._shared
        assert shared is not None
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise _listen_error(host, port, "udp", exc) from exc
        family, _, _, _, sockaddr = infos[0]
        attempts = _PORT_ZERO_ATTEMPTS if port == 0 else 1
        for attempt in range(attempts):
            try:
                udp_sock = _udp_socket(family, sockaddr, self._settings)
            except OSError as exc:
                raise _listen_error(host, port, "udp", exc) from exc
            bound = udp_sock.getsockname()[1]
            try:
                tcp_sock = _tcp_socket(family, _with_port(sockaddr, bound), self._settings)
            except OSError as exc:
                udp_sock.close()
                if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue  # port 0: UDP got a port whose TCP twin is taken; pick another
                raise _listen_error(host, bound, "tcp", exc) from exc
            break
        try:
            transport, protocol = await loop.create_datagram_endpoint(lambda: _UdpProtocol(shared), sock=udp_sock)
        except BaseException as exc:
            udp_sock.close()
            tcp_sock.close()
            if isinstance(exc, OSError):
                raise _listen_error(host, bound, "udp", exc) from exc
            raise
        self._udp.append((transport, protocol))
        log.info("listening", transport="udp", address=format_address(host, bound))
        try:
            listener = _TcpListener(tcp_sock, shared)
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
        if self._shared is None:
            return
        await self._close_all(grace=self._settings.tcp_write_timeout)
        self._shared = None
        log.info("stopped", addresses=[format_address(h, p) for h, p in self._addresses])

    async def _close_all(self, grace: float) -> None:
        shared = self._shared
        assert shared is not None
        servers, self._tcp = self._tcp, []
        udp, self._udp = self._udp, []
        for server in servers:
            server.close()
        for transport, _ in udp:
            transport.close()
        for conn in list(shared.connections):
            conn.shutdown()
        if shared.connections:
            try:
                async with asyncio.timeout(grace):
                    await shared.no_connections.wait()
            except TimeoutError:
                pass
        for conn in list(shared.connections):
            conn.kill()
        shared.close()
        waits: list[Any] = [protocol.closed for _, protocol in udp]
        waits += [server.wait_closed() for server in servers]
        if shared.connections:
            waits.append(shared.no_connections.wait())
        if waits:
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.gather(*waits, return_exceptions=True)
            except TimeoutError:
                log.warning("stop_incomplete", open_connections=len(shared.connections))

