"""What every attack script here shares: a loopback-only target, a bounded query budget (count and
time), and plain UDP/TCP exchanges with dnspython. The scripts reproduce issue 9's attacks against a
running dnsd so a fix can be shown to hold; they never send to anything but loopback."""
from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import sys
import time

import dns.message
import dns.query


class Budget:
    """Stops the attack after `max_queries` queries or `seconds` seconds, whichever comes first."""

    def __init__(self, max_queries: int, seconds: float):
        self.max_queries = max_queries
        self.deadline = time.monotonic() + seconds
        self.sent = 0

    def take(self) -> bool:
        if self.sent >= self.max_queries or time.monotonic() >= self.deadline:
            return False
        self.sent += 1
        return True


def parser(description: str, max_queries: int, seconds: float = 60.0) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--server", default="127.0.0.1", help="dnsd address (loopback only)")
    p.add_argument("--port", type=int, default=5353)
    p.add_argument("--max-queries", type=int, default=max_queries, help="stop after this many queries")
    p.add_argument("--seconds", type=float, default=seconds, help="stop after this long")
    return p


def loopback_target(args: argparse.Namespace) -> tuple[str, int]:
    """Refuse any target but loopback: these scripts are load and abuse generators."""
    try:
        address = ipaddress.ip_address(args.server)
    except ValueError:
        sys.exit(f"--server must be an IP address, not {args.server!r}")
    if not address.is_loopback:
        sys.exit(f"refusing to attack {address}: only loopback targets (127.0.0.0/8, ::1)")
    return str(address), args.port


def ask(target: tuple[str, int], query: dns.message.Message, tcp: bool = False, source: str | None = None,
        timeout: float = 2.0) -> dns.message.Message | None:
    """One exchange; None on a timeout (the server may drop what it refuses to answer)."""
    try:
        if tcp:
            return dns.query.tcp(query, target[0], port=target[1], timeout=timeout, source=source)
        return dns.query.udp(query, target[0], port=target[1], timeout=timeout, source=source)
    except (dns.exception.Timeout, OSError, EOFError):
        return None


def udp_exchange_raw(target: tuple[str, int], wire: bytes, timeout: float = 2.0) -> bytes | None:
    """Send raw bytes over UDP and return the raw reply (for malformed or hand-built queries)."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, target)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def tcp_exchange_raw(target: tuple[str, int], wire: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.create_connection(target, timeout=timeout) as sock:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        head = sock.recv(2)
        if len(head) < 2:
            return None
        size = struct.unpack("!H", head)[0]
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data
