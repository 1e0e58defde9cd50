"""HOST:PORT text as used in configs and command lines: '127.0.0.1:53', '[::1]:53', 'localhost:80'."""
from __future__ import annotations

import ipaddress


def parse_host_port(text: str, default_port: int | None = None, require_ip: bool = True) -> tuple[str, int]:
    """-> (host, port). IPv6 needs brackets when a port follows. Raises ValueError saying what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError("expected [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        host, port_text = text, ""  # a bare IPv6 address
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError("missing host")
    if require_ip:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None
    if not port_text:
        if default_port is None:
            raise ValueError("missing :PORT")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("port must be 0-65535")
    return host, int(port_text)


def format_host_port(host: str, port: int) -> str:
    """'127.0.0.1:53' or '[::1]:53': the text parse_host_port reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical_ip(host: str) -> str:
    """One spelling per address ('::0001' -> '::1'; an IPv6 zone index kept), so comparisons hold.
    Raises ValueError when it is not an IP address."""
    address, _, scope = host.partition("%")
    text = str(ipaddress.ip_address(address))
    return f"{text}%{scope}" if scope else text
