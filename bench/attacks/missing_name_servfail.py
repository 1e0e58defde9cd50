"""Attack (issue 9, item 5): missing names of chosen wire lengths made dnsd fail (SERVFAIL, and a
traceback in the log for every query). Sweeps every wire length from the shortest name to 255 under
the apex and each generated subtree, for a few qtypes, and prints every reply that is not NXDOMAIN or
NODATA. Bounded (default 12,000 queries, 120 s), loopback only.

    .venv/bin/python bench/attacks/missing_name_servfail.py --port 5353

Exit status 1 when any reply was wrong, 0 when none was.
"""
from __future__ import annotations

import struct
import sys

from attacklib import ZONE, Budget, loopback_target, parser, udp_exchange_raw

from dnsd import names

QTYPES = {"A": 1, "TXT": 16, "AAAA": 28, "TYPE666": 666}


def name_of_length(parent: str, length: int) -> bytes | None:
    """A wire name of exactly `length` bytes: 63-byte labels of 'q' below `parent`."""
    parent_wire = b"".join(bytes([len(p)]) + p.encode() for p in parent.split(".")) + b"\0"
    filler = length - len(parent_wire)
    if filler < 2:
        return None
    labels = b""
    while filler > 0:
        size = min(63, filler - 1)
        if filler - size - 1 == 1:
            size -= 1
        labels += bytes([size]) + b"q" * size
        filler -= size + 1
    return labels + parent_wire


def main() -> int:
    p = parser(__doc__.splitlines()[0], max_queries=12_000, seconds=120)
    p.add_argument("--zone", default=ZONE)
    args = p.parse_args()
    target = loopback_target(args)
    budget = Budget(args.max_queries, args.seconds)
    parents = [args.zone] + [f"{label}.{args.zone}" for label in (names.GEO, names.DATA, names.PRIVATELINK,
                                                                   names.TRAFFIC_MANAGER, names.REPLICA_HOSTS)]
    wrong: list[str] = []
    for parent in parents:
        for length in range(len(parent) + 4, 256):
            qname = name_of_length(parent, length)
            if qname is None:
                continue
            for qtype_name, qtype in QTYPES.items():
                if not budget.take():
                    break
                qid = budget.sent & 0xFFFF
                reply = udp_exchange_raw(target, struct.pack("!6H", qid, 0, 1, 0, 0, 0) + qname
                                         + struct.pack("!HH", qtype, 1))
                rcode = None if reply is None else reply[3] & 0xF
                if rcode not in (0, 3) or (reply is not None and struct.unpack_from("!H", reply, 6)[0]):
                    what = "no reply" if reply is None else f"rcode {rcode}"
                    wrong.append(f"  length {length} under {parent} {qtype_name}: {what}")
    print(f"{budget.sent} queries to {target[0]}:{target[1]}")
    if wrong:
        print(f"{len(wrong)} missing names got something other than NXDOMAIN/NODATA:")
        print("\n".join(wrong[:50]))
        return 1
    print("every missing name got NXDOMAIN or NODATA")
    return 0


if __name__ == "__main__":
    sys.exit(main())
