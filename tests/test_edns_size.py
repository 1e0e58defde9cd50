"""server.edns_udp_size reaches the wire: a real dnsd advertises it in its OPT and truncates UDP
answers above it (the client's own size permitting), for answers, errors (also those to queries it
could not parse) and truncated replies."""
from __future__ import annotations

import socket

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests import harness
from tests.dnstest import example_dict, isolated_example

BIG = "big.contoso"  # 6 TXT records of ~200 bytes: a ~1.3 kB answer, between 1232 and 1400
TXT = [{"name": BIG, "type": "TXT", "ttl": 60, "value": f'"{i}{"x" * 199}"'} for i in range(6)]


def ask(port: int, name: str, rdtype: str = "A", payload: int = 4096, rdclass: str = "IN") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, rdclass=rdclass, use_edns=0, payload=payload)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=3, ignore_trailing=True)


def ask_raw(port: int, data: bytes) -> dns.message.Message:
    """Send bytes as they are (a query dnsd cannot parse) and read the reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(data, ("127.0.0.1", port))
        reply, _ = sock.recvfrom(65535)
    return dns.message.from_wire(reply)


@pytest.mark.parametrize("configured,client,truncated", [
    (None, 4096, True),     # default 1232: the ~1.3 kB answer does not fit
    (1400, 4096, False),    # ours raised: it fits
    (1400, 1232, True),     # the client's smaller size still wins
    (4096, 4096, False),
    (512, 4096, True),
])
def test_our_udp_size_comes_from_the_config(tmp_path, configured, client, truncated):
    data = example_dict()
    server = dict(data["server"])
    if configured is None:
        server.pop("edns_udp_size", None)
    else:
        server["edns_udp_size"] = configured
    zone = {**data["zone"], "records": [*data["zone"]["records"], *TXT]}
    path = isolated_example(tmp_path, server=server, zone=zone)
    advertised = configured or 1232
    with harness.dnsd(path, extra_args=["--admin-listen", "off"]) as process:
        big = ask(process.port, f"{BIG}.azurecr.test", "TXT", payload=client)
        assert bool(big.flags & dns.flags.TC) is truncated
        assert big.payload == advertised
        assert big.answer == [] if truncated else len(big.answer[0]) == 6
        small = ask(process.port, "contoso.azurecr.test")
        refused = ask(process.port, "contoso.azurecr.test", rdclass="CH")
        assert (small.rcode(), small.payload) == (dns.rcode.NOERROR, advertised)
        assert (refused.rcode(), refused.payload) == (dns.rcode.REFUSED, advertised)
        garbage_after = dns.message.make_query("contoso.azurecr.test", "A", use_edns=0).to_wire() + b"\x00"
        formerr = ask_raw(process.port, garbage_after)
        assert (formerr.rcode(), formerr.payload) == (dns.rcode.FORMERR, advertised)
