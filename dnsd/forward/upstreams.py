"""Upstream resolvers: their addresses (HOST:PORT lists, resolv.conf files), their counters, and the
order they are tried in by smoothed round-trip time (SRTT, as BIND and unbound keep it)."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from dnsd.common.hostport import format_host_port, parse_host_port

DNS_PORT = 53

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


def parse_upstreams(texts: Iterable[str]) -> list[tuple[str, int]]:
    """['9.9.9.9', '[2620:fe::fe]:53', '127.0.0.1:5353'] -> [(host, port)]; port 53 when not given.
    Raises ValueError naming the bad entry."""
    result = []
    for text in texts:
        try:
            host, port = parse_host_port(text, default_port=DNS_PORT)
        except ValueError as exc:
            raise ValueError(f"upstream {text!r}: {exc}") from None
        if port == 0:
            raise ValueError(f"upstream {text!r}: port 0")
        result.append((_canonical(host), port))
    return result


def nameservers_from_resolv_conf(text: str, ours: Iterable[tuple[str, int]] = ()) -> list[tuple[str, int]]:
    """The `nameserver` lines of a resolv.conf, as (address, 53), in file order, without repeats.
    Addresses we listen on ourselves (`ours`, HOST:PORT pairs) are left out so we never forward to
    ourselves; a wildcard listener on port 53 (0.0.0.0 or ::) also leaves out loopback addresses.
    Lines that are not a valid nameserver entry are skipped, as the C library does."""
    ours_set = {(_canonical(host), port) for host, port in ours}
    # a dual-stack wildcard (::) receives IPv4 too: any wildcard on port 53 covers both loopbacks
    wildcard = any(port == DNS_PORT and ipaddress.ip_address(host.split("%")[0]).is_unspecified
                   for host, port in ours_set)
    found: list[tuple[str, int]] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            host = _canonical(fields[1])
        except ValueError:
            continue
        address = ipaddress.ip_address(host.split("%")[0])
        if (host, DNS_PORT) in ours_set or (wildcard and address.is_loopback):
            continue
        if (host, DNS_PORT) not in found:
            found.append((host, DNS_PORT))
    return found


def read_resolv_conf(path: str, ours: Iterable[tuple[str, int]] = ()) -> list[tuple[str, int]]:
    """nameservers_from_resolv_conf of a file (OSError when it cannot be read)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return nameservers_from_resolv_conf(f.read(), ours)


def _canonical(host: str) -> str:
    """One spelling per address ('::0001' -> '::1'), so comparisons with reply senders hold."""
    address, _, scope = host.partition("%")
    text = str(ipaddress.ip_address(address))
    return f"{text}%{scope}" if scope else text


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
        self.all = [Upstream(_canonical(host), port) for host, port in addresses]

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
