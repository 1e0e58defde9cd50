"""Attack (issue 9, item 11): the two replies genreport flagged. An unknown opcode (15) with every
header flag set, whose NOTIMP reply must echo none of RD/CD/AD/AA/RA/Z; and a query signed with a TSIG
key the server does not have, which must get NOTAUTH with TSIG error BADKEY and an unsigned TSIG
(RFC 8945 section 5.2), not a normal unsigned answer. A handful of queries, loopback only.

    .venv/bin/python bench/attacks/protocol_probes.py --port 5353

Prints each reply; exit status 1 when any is wrong, 0 when both are right.
"""
from __future__ import annotations

import struct
import sys

import dns.message
import dns.name
import dns.rcode
import dns.tsig

from attacklib import ZONE, loopback_target, parser, udp_exchange_raw

FLAG_BITS = {"aa": 0x0400, "tc": 0x0200, "rd": 0x0100, "ra": 0x0080, "z": 0x0040, "ad": 0x0020, "cd": 0x0010}


def main() -> int:
    args = parser(__doc__.splitlines()[0], max_queries=10).parse_args()
    target = loopback_target(args)
    problems = []

    query = struct.pack("!6H", 0x1501, (15 << 11) | sum(FLAG_BITS.values()), 0, 0, 0, 0)
    reply = udp_exchange_raw(target, query)
    if reply is None:
        problems.append("opcode 15: no reply")
    else:
        flags = struct.unpack_from("!H", reply, 2)[0]
        echoed = [name for name, bit in FLAG_BITS.items() if flags & bit]
        print(f"opcode 15 with every flag: {dns.rcode.to_text(flags & 0xF)}, opcode {(flags >> 11) & 0xF}, "
              f"flags echoed: {', '.join(echoed) or 'none'}")
        if flags & 0xF != dns.rcode.NOTIMP or echoed or (flags >> 11) & 0xF != 15:
            problems.append("opcode 15: expected NOTIMP with opcode 15 and no flags but QR")

    signed = dns.message.make_query(ZONE, "SOA", use_edns=False)
    keyname = dns.name.from_text("attacker-key.")
    signed.use_tsig({keyname: dns.tsig.Key(keyname, b"k" * 32, dns.tsig.HMAC_SHA256)}, keyname=keyname)
    wire = udp_exchange_raw(target, signed.to_wire())
    if wire is None:
        problems.append("signed query: no reply")
    else:
        message = dns.message.from_wire(wire, keyring=False)
        rcode = dns.rcode.to_text(message.rcode())
        if message.had_tsig:
            tsig = message.tsig[0]
            print(f"query signed with an unknown key: {rcode}, answers {len(message.answer)}, TSIG error "
                  f"{dns.rcode.to_text(tsig.error)}, MAC {len(tsig.mac)} bytes, key {message.keyname}")
            if message.rcode() != dns.rcode.NOTAUTH or tsig.error != dns.rcode.BADKEY or tsig.mac:
                problems.append("signed query: expected NOTAUTH, BADKEY, empty MAC")
        else:
            print(f"query signed with an unknown key: {rcode}, answers {len(message.answer)}, no TSIG")
            problems.append("signed query: answered without TSIG (expected NOTAUTH/BADKEY)")
    for problem in problems:
        print("WRONG:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
