"""Upstream resolver addresses as the forward section gives them: HOST:PORT lists and the nameserver
lines of a resolv.conf, canonical, and never one of our own listen addresses (a forwarding loop)."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from dnsd.common.hostport import canonical_ip, parse_host_port

DNS_PORT = 53


def parse_upstream(text: str) -> tuple[str, int]:
    """'9.9.9.9', '[2620:fe::fe]:53', '127.0.0.1:5353' -> (canonical IP, port); port 53 when not given.
    Raises ValueError saying what is wrong."""
    host, port = parse_host_port(text, default_port=DNS_PORT)
    if port == 0:
        raise ValueError("port 0")
    return canonical_ip(host), port


def parse_upstreams(texts: Iterable[str]) -> list[tuple[str, int]]:
    """parse_upstream of each; the ValueError names the bad entry."""
    result = []
    for text in texts:
        try:
            result.append(parse_upstream(text))
        except ValueError as exc:
            raise ValueError(f"upstream {text!r}: {exc}") from None
    return result


def is_own(host: str, port: int, ours: Iterable[tuple[str, int]]) -> bool:
    """Whether HOST:PORT is one of our listen addresses (`ours`), so asking it would ask ourselves. A
    wildcard listener (0.0.0.0 or ::) on that port covers the loopback addresses too (a dual-stack
    wildcard receives IPv4 as well, so either covers both families' loopbacks)."""
    host = canonical_ip(host)
    address = ipaddress.ip_address(host.split("%")[0])
    for own_host, own_port in ours:
        if own_port != port:
            continue
        own = canonical_ip(own_host)
        if own == host or (ipaddress.ip_address(own.split("%")[0]).is_unspecified and address.is_loopback):
            return True
    return False


def nameservers_from_resolv_conf(text: str, ours: Iterable[tuple[str, int]] = ()) -> list[tuple[str, int]]:
    """The `nameserver` lines of a resolv.conf, as (address, 53), in file order, without repeats.
    Addresses we listen on ourselves (`ours`, HOST:PORT pairs) are left out so we never forward to
    ourselves; a wildcard listener on port 53 (0.0.0.0 or ::) also leaves out loopback addresses.
    Lines that are not a valid nameserver entry are skipped, as the C library does."""
    ours = list(ours)
    found: list[tuple[str, int]] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            host = canonical_ip(fields[1])
        except ValueError:
            continue
        if not is_own(host, DNS_PORT, ours) and (host, DNS_PORT) not in found:
            found.append((host, DNS_PORT))
    return found


def read_resolv_conf(path: str, ours: Iterable[tuple[str, int]] = ()) -> list[tuple[str, int]]:
    """nameservers_from_resolv_conf of a file (OSError when it cannot be read)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return nameservers_from_resolv_conf(f.read(), ours)
