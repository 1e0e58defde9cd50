"""ForwardSettings: every knob of the forwarding core and its default. Part 2 of issue 10 moves this
dataclass into dnsd/model.py as the `forward:` section's model (defaults live there), and the config
builder fills it; the core reads only these attributes."""
from __future__ import annotations

from dataclasses import dataclass

from dnsd.protocol.wire import EDNS_UDP_SIZE


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    upstreams: tuple[tuple[str, int], ...] = ()  # (IP, port): parse_upstreams / read_resolv_conf
    # Clients that may have names outside our zone resolved: everyone else gets REFUSED, so geotm is
    # never an open resolver. Loopback only unless the config lists the docker networks.
    allow_clients: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    try_timeout: float = 1.0  # seconds one upstream gets (the TCP retry after TC=1 gets as long again)
    deadline: float = 3.0  # seconds for the whole lookup, every upstream and retry included
    max_in_flight: int = 1000  # distinct lookups under way upstream; more -> stale or SERVFAIL
    edns_udp_size: int = EDNS_UDP_SIZE  # advertised upstream and to clients (the server's edns_udp_size)
    cache_entries: int = 10_000
    cache_bytes: int = 16 * 1024 * 1024
    min_ttl: int = 0  # floor of every cached TTL
    max_ttl: int = 3600  # cap of every cached TTL
    max_negative_ttl: int = 1800  # cap of NXDOMAIN/NODATA lifetimes (RFC 2308: min(SOA TTL, MINIMUM))
    stale_for: int = 0  # seconds past expiry an answer may be served (TTL 30) when all upstreams fail

    def __post_init__(self) -> None:
        for name in ("try_timeout", "deadline", "max_in_flight", "edns_udp_size", "cache_entries",
                     "cache_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"forward {name} must be above 0")
        for name in ("min_ttl", "max_ttl", "max_negative_ttl", "stale_for"):
            if getattr(self, name) < 0:
                raise ValueError(f"forward {name} must not be negative")
