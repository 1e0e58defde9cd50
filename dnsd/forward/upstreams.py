"""Upstream resolvers as the forwarder uses them: their counters, and the order they are tried in by
smoothed round-trip time (SRTT, as BIND and unbound keep it). Their addresses come from the config
(dnsd.config.upstreams: HOST:PORT lists, resolv.conf files)."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from dnsd.common.hostport import canonical_ip, format_host_port

# SRTT: new = (1 - SRTT_WEIGHT) * old + SRTT_WEIGHT * measured (BIND's 0.7/0.3 smoothing).
SRTT_WEIGHT = 0.3
# Every time an upstream is passed over, its SRTT shrinks by this factor (BIND's decay), so a slower
# one is asked again now and then and its measurement stays fresh: at 0.98 an upstream twice as
# slow as the fastest is asked about once per 35 queries.
SRTT_DECAY = 0.98
SRTT_MAX = 10.0  # seconds: the worst a run of timeouts can make an upstream look
# Upper bounds (seconds) of the latency histogram buckets; one more bucket counts the rest.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Error kinds counted per upstream. A mismatched reply (wrong ID, question, sender) is ignored and
# the wait goes on; "truncated" counts replies with TC=1, each followed by the same query over TCP.
ERROR_KINDS = ("timeout", "network", "malformed", "mismatched", "truncated", "servfail", "refused",
               "formerr", "notimp", "other_rcode")


@dataclass(slots=True)
class UpstreamStats:
    """Plain counters of one upstream (exported to Prometheus by the integration)."""

    queries: int = 0  # queries sent, UDP and TCP
    answers: int = 0  # usable replies (NOERROR, NXDOMAIN)
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_count += 1
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[index] += 1
                return
        self.latency_buckets[-1] += 1


@dataclass(slots=True, eq=False)
class Upstream:
    host: str
    port: int
    srtt: float = 0.0  # seconds; 0 until measured, so every upstream is asked early on
    stats: UpstreamStats = field(default_factory=UpstreamStats)

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)

    def sent_from(self, addr: tuple | None) -> bool:
        """Whether a datagram's sender address is this upstream (None: the socket is connected, the
        kernel has already checked it)."""
        if addr is None:
            return True
        if addr[1] != self.port:
            return False
        try:
            return (ipaddress.ip_address(str(addr[0]).split("%")[0])
                    == ipaddress.ip_address(self.host.split("%")[0]))
        except ValueError:
            return False


class Upstreams:
    """The upstreams in the order to try them: lowest SRTT first, config order between equals."""

    def __init__(self, addresses: Iterable[tuple[str, int]]) -> None:
        self.all = [Upstream(canonical_ip(host), port) for host, port in addresses]

    def ranked(self) -> list[Upstream]:
        """The order the next query would use (no side effects: for explain)."""
        return sorted(self.all, key=lambda up: up.srtt)  # sort is stable: config order on ties

    def for_query(self) -> list[Upstream]:
        """ranked(), and every upstream but the first decays a little (see SRTT_DECAY)."""
        order = self.ranked()
        for upstream in order[1:]:
            upstream.srtt *= SRTT_DECAY
        return order

    @staticmethod
    def measured(upstream: Upstream, rtt: float) -> None:
        upstream.srtt = rtt if upstream.srtt == 0.0 else (1 - SRTT_WEIGHT) * upstream.srtt + SRTT_WEIGHT * rtt

    @staticmethod
    def penalised(upstream: Upstream, timeout: float) -> None:
        """A timeout or a server-wide refusal: at least twice the timeout, doubled on each repeat."""
        upstream.srtt = min(SRTT_MAX, 2 * max(upstream.srtt, timeout))
