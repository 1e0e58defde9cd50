"""What the UDP and TCP listeners of one DnsServer share: the handler contract, the packet-cache front
(PacketCacheOwner), ListenerSettings, and ListenerContext (the handler, the settings, the UDP rate
limiter, the loop, the logs of failures)."""
from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from dnsd.common.logs import LogGate
from dnsd.model import ServerSettings

if TYPE_CHECKING:
    from dnsd.protocol.rrl import ResponseRateLimiter

log = structlog.get_logger(__name__)

# Every message received is given to the handler: (query, client_ip, over_tcp) -> the reply, None for
# silence, or an asyncio Future (a Task) of either when the reply comes later (a forwarded query
# waiting for an upstream). The listeners tell them apart by `type(reply) is bytes` only, so the
# reply sent at once costs nothing more: the handler returns exactly bytes, never a subclass or a
# bytearray. A later reply is sent as one sent at once would be (UDP: through the rate limiter; TCP:
# framed, possibly out of order, RFC 7766 6.2.1.1); a Future cancelled or failed sends nothing.
Reply = bytes | None | asyncio.Future[bytes | None]
Handler = Callable[[bytes, str, bool], Reply]



class HitStats(Protocol):
    """The counters a packet-cache hit answered by the listener goes up in (dnsd.serving.stats.QueryStats)."""

    counts: dict[Any, int]  # labels -> queries
    located: dict[Any, int]  # where performance routing placed the client -> answers
    latency_counts: list[int]  # per bucket of latency_bounds (bisect_left), and one beyond the last
    latency_sum: float
    latency_bounds: tuple[float, ...]


class PacketCacheOwner(Protocol):
    """The handler's exact packet cache, for the batched UDP listener (dnsd.protocol.udp) to answer its
    hits without calling the handler, exactly as the handler would: `cache` maps (query[2:], client_ip,
    over_tcp) to (reply[2:], labels, located or None) and is read again for every batch (a snapshot swap
    replaces it); a hit is the query's ID + reply[2:], counted as counts[labels] += 1, located[located]
    += 1 when not None, and its latency observed. The handler stays the one that fills it."""

    cache: dict[tuple[bytes, str, bool], tuple[bytes, Any, Any]]
    stats: HitStats


_LOAD_FRACTION = 0.75  # "near the limit": the short idle timeout applies from this share of tcp_max_connections


_CONFIG_DEFAULTS = ServerSettings()  # the config model owns the defaults of every configurable knob


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """dnsd.app builds these from the config's server section; the defaults are the model's."""

    tcp_idle_timeout: float = _CONFIG_DEFAULTS.tcp_idle_timeout  # close a TCP connection idle this long
    tcp_idle_timeout_under_load: float = _CONFIG_DEFAULTS.tcp_idle_timeout_under_load  # ...from 3/4 of the cap
    tcp_write_timeout: float = 5.0  # a client that does not read its replies is dropped after this
    tcp_max_connections: int = _CONFIG_DEFAULTS.tcp_max_connections  # then new ones replace the longest idle
    tcp_max_connections_per_source: int = _CONFIG_DEFAULTS.tcp_max_connections_per_source  # more: closed at once
    tcp_source_prefix_v4: int = _CONFIG_DEFAULTS.tcp_source_prefix_v4  # one source: IPv4 aggregated to this
    tcp_source_prefix_v6: int = _CONFIG_DEFAULTS.tcp_source_prefix_v6  # ... and IPv6 to this prefix
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


def format_address(host: str, port: int) -> str:
    """'127.0.0.1:53' or '[::1]:53'."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ListenerContext:
    """What all listeners of one DnsServer share: the handler, the settings, the UDP rate limiter, the
    event loop, and the log gates of handler failures and dropped UDP replies (one each per server)."""

    __slots__ = ("handler", "settings", "rrl", "loop", "failures", "udp_drops")

    def __init__(self, handler: Handler, settings: ListenerSettings,
                 rrl: ResponseRateLimiter | None = None) -> None:
        self.handler = handler
        self.settings = settings
        self.rrl = rrl  # UDP replies only: TCP is the way around the limit for real resolvers
        self.loop = asyncio.get_running_loop()
        self.failures = LogGate(interval=1.0, burst=10)
        self.udp_drops = LogGate(interval=1.0, burst=1)

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

