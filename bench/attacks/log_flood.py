"""Attack (issue 9, item 6): fill dnsd's disk through its log. Sends bursts of queries that are
logged per query: names that used to fail (a traceback each), names outside the zone (REFUSED) and
malformed queries (FORMERR). With --log FILE (dnsd's log output) prints how many bytes the log grew
per query. Bounded (default 10,000 queries of each kind, 120 s), loopback only.

    dnsd serve ... 2> /tmp/dnsd.log &
    .venv/bin/python bench/attacks/log_flood.py --port 5353 --log /tmp/dnsd.log

Exit status 1 when the log grew by more than --max-bytes-per-query on average, else 0.
"""
from __future__ import annotations

import os
import socket
import struct
import sys
import time

from attacklib import ZONE, Budget, loopback_target, parser


def wire_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


def queries(kind: str, count: int, zone: str):
    for i in range(count):
        header = struct.pack("!6H", i & 0xFFFF, 0, 1, 0, 0, 0)
        if kind == "failing":  # missing names of wire length 64 + 1 + the zone's (79 under azurecr.test)
            qname = wire_name(f"{i:06d}{'q' * 56}.x.{zone}")  # each distinct: no packet-cache hits
        elif kind == "refused":
            qname = wire_name(f"n{i}.example.com")
        else:  # malformed: one byte of trailing garbage
            qname = wire_name(f"m{i}.{zone}")
        body = header + qname + struct.pack("!HH", 1, 1)
        yield body + (b"\0" if kind == "malformed" else b"")


def main() -> int:
    p = parser(__doc__.splitlines()[0], max_queries=30_000, seconds=120)
    p.add_argument("--zone", default=ZONE)
    p.add_argument("--per-kind", type=int, default=10_000)
    p.add_argument("--log", help="dnsd's log file, to measure its growth")
    p.add_argument("--max-bytes-per-query", type=float, default=5.0)
    p.add_argument("--settle", type=float, default=1.5, help="seconds to wait for the log before measuring")
    args = p.parse_args()
    target = loopback_target(args)
    budget = Budget(args.max_queries, args.seconds)
    before = os.path.getsize(args.log) if args.log else 0
    answers: dict[str, dict[int, int]] = {}
    with socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for kind in ("failing", "refused", "malformed"):
            rcodes: dict[int, int] = {}
            window = 0
            for wire in queries(kind, args.per_kind, args.zone):
                if not budget.take():
                    break
                sock.sendto(wire, target)
                window += 1
                if window == 50:  # at most 50 in flight
                    for _ in range(window):
                        try:
                            reply = sock.recv(4096)
                        except TimeoutError:
                            break
                        rcodes[reply[3] & 0xF] = rcodes.get(reply[3] & 0xF, 0) + 1
                    window = 0
            answers[kind] = rcodes
    names = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
    for kind, rcodes in answers.items():
        print(f"{kind:>9}: " + ", ".join(f"{names.get(r, r)} {n}" for r, n in sorted(rcodes.items())))
    print(f"{budget.sent} queries to {target[0]}:{target[1]}")
    if not args.log:
        return 0
    time.sleep(args.settle)
    grown = os.path.getsize(args.log) - before
    per_query = grown / max(budget.sent, 1)
    print(f"log grew by {grown} bytes: {per_query:.2f} bytes per query")
    return 1 if per_query > args.max_bytes_per_query else 0


if __name__ == "__main__":
    sys.exit(main())
