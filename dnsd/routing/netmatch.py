"""Longest-prefix match of client addresses to values (views, client regions), fast enough per query."""
from __future__ import annotations

import ipaddress
import socket
from typing import Generic, Iterable, TypeVar

T = TypeVar("T")


def address_key(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    """(family bits 32|128, address as int). Accepts a string (source address) or an ipaddress value."""
    if isinstance(address, str):
        try:
            return 32, int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
        except OSError:
            text = address.split("%", 1)[0]  # drop an IPv6 zone index
            packed = socket.inet_pton(socket.AF_INET6, text)
            if packed[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped IPv6: treat as IPv4
                return 32, int.from_bytes(packed[12:], "big")
            return 128, int.from_bytes(packed, "big")
    return address.max_prefixlen, int(address)


class PrefixMatcher(Generic[T]):
    """Maps networks to values; lookup returns the value of the longest prefix containing an address."""

    def __init__(self, entries: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, T]]):
        # per family: [(prefix_len, {network_int >> (bits - prefix_len): value})], longest first
        tables: dict[int, dict[int, dict[int, T]]] = {32: {}, 128: {}}
        for network, value in entries:
            bits = network.max_prefixlen
            tables[bits].setdefault(network.prefixlen, {})[int(network.network_address) >> (bits - network.prefixlen)] = value
        self._tables = {bits: sorted(((plen, table) for plen, table in by_len.items()), reverse=True,
                                     key=lambda item: item[0])
                        for bits, by_len in tables.items()}

    def __bool__(self) -> bool:
        return bool(self._tables[32] or self._tables[128])

    def lookup(self, bits: int, value: int, max_prefix: int | None = None) -> T | None:
        """Longest match for the address; with max_prefix (an ECS source prefix) only prefixes that
        fit inside what the client revealed count, so a /16 ECS never matches a /24 network."""
        for plen, table in self._tables[bits]:
            if max_prefix is not None and plen > max_prefix:
                continue
            hit = table.get(value >> (bits - plen))
            if hit is not None:
                return hit
        return None
