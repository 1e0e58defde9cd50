"""Reflection/amplification against dnsd, on loopback only, bounded: one source floods the query with
the largest answer-to-query ratio, and we count what comes back to it (in a real attack the source
is spoofed and the victim gets it). Run against dnsd without and with `server.rate_limit`.

    .venv/bin/python bench/attacks/amplification.py [--seconds 3] [--rate 20000] [--port P]

Without --port it starts two dnsd of its own from config/example.yaml (rate_limit absent, and
rate_limit {responses_per_second: 20, slip: 2}) on free loopback ports and stops them by PID after.
With --port it attacks that one dnsd (a loopback address only) and reports the same figures."""
from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import tempfile
import time
from pathlib import Path

import dns.flags
import dns.message
import yaml
from attacklib import GLOBAL_NAME, ROOT, ZONE  # (puts ROOT on sys.path)

sys.path.insert(0, str(ROOT / "bench"))
import peerconfig  # noqa: E402

from dnsd.common.children import Child, ChildFailed, free_port  # noqa: E402

MAX_SECONDS = 10
MAX_RATE = 100_000
SOURCE = "127.0.66.6"  # the "victim": any 127/8 address works as a source on Linux loopback
CANDIDATES = [  # (qname, qtype, edns): what an attacker would try; the best is taken
    (qname, qtype, edns) for edns in (False, True)
    for qname, qtype in ((ZONE, "SOA"), (ZONE, "NS"), (ZONE, "MX"), (ZONE, "CAA"), (ZONE, "ANY"), (ZONE, "TXT"),
                         (GLOBAL_NAME, "A"), (GLOBAL_NAME, "AAAA"), (f"_acme-challenge.{GLOBAL_NAME}", "TXT"),
                         (f"nx-0123456789.{ZONE}", "A"))
]


def wire(qname: str, qtype: str, edns: bool, qid: int = 0) -> bytes:
    q = dns.message.make_query(qname, qtype, use_edns=0, payload=1232) if edns else dns.message.make_query(qname, qtype)
    q.flags &= ~dns.flags.RD
    q.id = qid
    return q.to_wire()


def best_query(port: int) -> tuple[tuple[str, str, bool], float, int, int]:
    """The candidate with the largest reply/query size ratio (asked once each, over UDP)."""
    best = None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.bind(("127.0.0.1", 0))
        for cand in CANDIDATES:
            query = wire(*cand)
            sock.sendto(query, ("127.0.0.1", port))
            reply = sock.recv(65535)
            ratio = len(reply) / len(query)
            if best is None or ratio > best[1]:
                best = (cand, ratio, len(query), len(reply))
    assert best is not None
    return best


def flood(port: int, query: bytes, seconds: float, rate: int) -> dict:
    """Send `query` from SOURCE at `rate` per second for `seconds` (at most rate * seconds queries),
    reading replies as they come, then 1 s more for stragglers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((SOURCE, 0))
    sock.setblocking(False)
    sent = bytes_in = replies = full = truncated = 0
    bytes_out = 0

    def drain() -> None:
        nonlocal bytes_in, replies, full, truncated
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            replies += 1
            bytes_in += len(data)
            if data[2] & 0x02 and data[6:8] == b"\0\0":
                truncated += 1
            else:
                full += 1

    total = int(seconds * rate)
    started = time.monotonic()
    try:
        while sent < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                try:
                    sock.sendto(query, ("127.0.0.1", port))
                except BlockingIOError:
                    break
                sent += 1
                bytes_out += len(query)
            drain()
            if time.monotonic() - started > seconds + 5:  # the sender could not keep up: stop anyway
                break
            time.sleep(0.0005)
        elapsed = time.monotonic() - started
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            drain()
            time.sleep(0.01)
    finally:
        sock.close()
    return {"sent": sent, "seconds": round(elapsed, 2), "replies": replies, "full": full, "truncated": truncated,
            "bytes_sent": bytes_out, "bytes_received": bytes_in,
            "amplification": round(bytes_in / bytes_out, 2) if bytes_out else 0.0,
            "answered_percent": round(100 * full / sent, 2) if sent else 0.0}


def start_dnsd(tmp: Path, name: str, rate_limit: dict | None) -> tuple[Child, int]:
    port = free_port()
    doc = peerconfig.geotm_bench_document(ROOT / "config" / "example.yaml", tmp, port)
    if rate_limit is not None:
        doc["server"]["rate_limit"] = rate_limit
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
    child = Child([python, "-m", "dnsd", "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}",
                   "--admin-listen", "off", "--log-level", "warning"], tmp / f"{name}.log", name=name, cwd=ROOT)
    try:
        child.start().wait_ready(lambda: best_query(port), 20, interval=0.2)
    except ChildFailed:
        raise SystemExit(f"dnsd ({name}) did not start:\n{child.log_text()[-2000:]}") from None
    return child, port


def attack(port: int, label: str, seconds: float, rate: int) -> dict:
    (qname, qtype, edns), ratio, qlen, rlen = best_query(port)
    result = flood(port, wire(qname, qtype, edns), seconds, rate)
    result.update(target=label, query=f"{qname} {qtype}{' +edns' if edns else ''}", query_bytes=qlen,
                  reply_bytes=rlen, size_ratio=round(ratio, 2))
    print(f"{label:>28}: {result['query']} ({qlen} -> {rlen} bytes, x{ratio:.2f}); sent {result['sent']} in "
          f"{result['seconds']} s, whole answers {result['full']} ({result['answered_percent']}%), "
          f"TC {result['truncated']}, bytes {result['bytes_sent']} -> {result['bytes_received']}: "
          f"amplification x{result['amplification']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help=f"flood length (at most {MAX_SECONDS})")
    ap.add_argument("--rate", type=int, default=20_000, help=f"queries per second (at most {MAX_RATE})")
    ap.add_argument("--port", type=int, help="attack this running dnsd on 127.0.0.1 instead of starting two")
    args = ap.parse_args(argv)
    if not (0 < args.seconds <= MAX_SECONDS and 0 < args.rate <= MAX_RATE):
        ap.error(f"bounded: 0 < --seconds <= {MAX_SECONDS}, 0 < --rate <= {MAX_RATE}")
    assert ipaddress.ip_address("127.0.0.1").is_loopback  # the only target this script ever sends to
    if args.port:
        attack(args.port, f"127.0.0.1:{args.port}", args.seconds, args.rate)
        return 0
    with tempfile.TemporaryDirectory(prefix="geotm-amplification-") as tmp:
        procs = []
        try:
            for name, rate_limit in (("no rate_limit", None),
                                     ("rate_limit 20/s slip 2", {"responses_per_second": 20, "slip": 2})):
                proc, port = start_dnsd(Path(tmp), name.replace(" ", "_").replace("/", ""), rate_limit)
                procs.append(proc)
                attack(port, name, args.seconds, args.rate)
                proc.stop()
        finally:
            for proc in procs:
                proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
