"""The TCP listener (RFC 7766 / RFC 1035 4.2.2): our own accept loop, the per-source and global caps, and
the connections.

Each message is preceded by a two-byte length. Pipelined queries are answered in order, except those
whose reply comes later (the handler returned a Future: a forwarded query waiting for an upstream),
which are written when ready, out of order (RFC 7766 6.2.1.1 allows it; clients match replies by ID).
Connections are asyncio Protocols, so a slow or stalled client costs one buffer and two timers, never
a blocked task that others wait on:

* idle timeout: a connection that does not complete a message within ``tcp_idle_timeout``
  of its previous one (or of being opened) is closed, so a partial length prefix followed by
  silence cannot pin a connection forever;
* write timeout: when replies pile up because the client does not read them, we stop reading
  its queries (back-pressure) and drop the connection unless it catches up within
  ``tcp_write_timeout``; memory per connection stays bounded;
* later replies: at most ``_MAX_PENDING_REPLIES`` per connection; at that many we stop reading its
  queries until one is written. A connection with replies pending is not idle: neither the idle
  timeout, the short one under load, nor eviction closes it under them, and a client that is done
  (EOF, a zero-length message, server shutdown) is closed once they are written;
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
import os
import socket
from dataclasses import dataclass, replace
from typing import Any

import structlog

from dnsd.common.logs import LogGate
from dnsd.protocol.listening import ListenerContext, ListenerSettings

log = structlog.get_logger(__name__)

_MAX_TCP_MESSAGE = 0xFFFF
_TCP_FLUSH_BYTES = 16 * 1024  # batch pipelined replies into writes of about this size
_TCP_BACKLOG = 1024
_ACCEPT_BATCH = 16  # connections accepted per readiness callback: bounds descriptors taken before we decide
_ACCEPT_PAUSE = 0.1  # after EMFILE/ENFILE: seconds before trying accept() again
_MAX_PENDING_REPLIES = 64  # later replies one connection may wait for; then we stop reading its queries
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_MISSING = object()
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


class TcpConnections:
    """The open TCP connections of one DnsServer, in the order of their last complete query (least
    recent first), and what admits, orders and sheds them: per-source and global caps, longest-idle
    eviction, the short idle timeout near the cap."""

    __slots__ = ("context", "handler", "settings", "loop", "connections", "per_source", "no_connections", "stats",
                 "refusals", "evictions", "load_log", "normal_log", "accept_errors", "_sweeper")

    def __init__(self, context: ListenerContext) -> None:
        self.context = context
        self.handler = context.handler  # the connections read these two per batch of queries: one attribute away
        self.settings = context.settings
        self.loop = context.loop
        self.connections: dict[_TcpConnection, None] = {}  # insertion order = least recently active first
        self.per_source: dict[str, int] = {}
        self.no_connections = asyncio.Event()
        self.no_connections.set()
        self.stats = TcpStats()
        self.refusals = LogGate(interval=1.0, burst=1)
        self.evictions = LogGate(interval=1.0, burst=1)
        self.load_log = LogGate(interval=10.0, burst=1)  # entering and leaving load may flap
        self.normal_log = LogGate(interval=10.0, burst=1)
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
            if conn.established and not conn.pending:  # not idle: replies are on their way
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


class _TcpConnection(asyncio.Protocol):
    """One TCP client: framing, pipelining, idle and write timeouts. Created by TcpConnections.admit, which
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
        "pending",
        "_held",
    )

    def __init__(self, shared: TcpConnections, ip: str, source: str) -> None:
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
        self.pending = 0  # replies that come later (the handler's Futures), not yet written
        self._held = False  # _MAX_PENDING_REPLIES pending: we stopped reading queries until one is written

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
        if not (self._paused or self._held):
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
        if transport is None or transport.is_closing() or self._held:
            return  # held: reading resumes once a later reply is written (_reply_ready)
        self._process_and_read_on(transport)

    def _process_and_read_on(self, transport: asyncio.Transport) -> None:
        """Answer the messages buffered so far, then read more (or finish at EOF) unless answering
        paused, ended or held the connection."""
        self._process()
        if self._paused or self._done or self._held:
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
        """Under load: close unless our replies are backed up (the write timeout governs those) or
        still to come."""
        if not self.established or self._paused or self.pending:
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
                self._shared.context.handler_failed(ip, "tcp", exc)
                continue
            if reply is None:
                continue
            if type(reply) is not bytes:  # a Future: written when ready (_reply_ready)
                self.pending += 1
                reply.add_done_callback(self._reply_ready)
                if self.pending >= _MAX_PENDING_REPLIES:
                    self._held = True
                    transport.pause_reading()
                    break
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

    def _reply_ready(self, later) -> None:
        """A later reply: write it (framed) if the connection is still open, then read queries again if
        the pending bound had stopped us, or close if the client is done and this was the last."""
        self.pending -= 1
        transport = self._transport
        if transport is None or transport.is_closing() or later.cancelled():
            return
        exc = later.exception()
        reply = later.result() if exc is None else None
        if exc is not None:
            self._shared.context.handler_failed(self.ip, "tcp", exc)
        elif reply is not None and len(reply) > _MAX_TCP_MESSAGE:
            log.error("reply_too_large", client=self.ip, size=len(reply))
        elif reply is not None:
            transport.write(len(reply).to_bytes(2, "big") + reply)
        if self._done:
            if not self.pending:
                self._finish()  # the close it deferred for this reply
            return
        if self._held and not self._paused:
            self._held = False
            self._process_and_read_on(transport)
        elif self._held:
            self._held = False  # resume_writing reads again

    def _finish(self) -> None:
        """Stop processing and close once the pending replies are written (later ones included)."""
        self._done = True
        self._buffer = bytearray()
        if self.pending:
            return  # _reply_ready calls again when the last one is written
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
        if self._paused or self.pending:
            # Not the client's idleness: we stopped reading (the write timeout governs), or its
            # replies are still to come.
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


class TcpListener:
    """One listening TCP socket: accept(), admit or close at once, hand admitted sockets to the loop."""

    def __init__(self, sock: socket.socket, shared: TcpConnections) -> None:
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


def tcp_socket(family: int, sockaddr: tuple[Any, ...], settings: ListenerSettings) -> socket.socket:
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

