#!/usr/bin/env python3
"""Connection hog (issue 9, item 3): one source opens many DNS-over-TCP connections and keeps each
alive with a query every few seconds, while a client from another source keeps asking over TCP
(what a resolver does after a truncated UDP answer). PASS when every such query is answered within
100 ms. Loopback only; bounded in connections and time; starts its own dnsd unless --port is given.

    bench/attacks/connection_hog.py                           # 1,024 hog connections for 20 s
    bench/attacks/connection_hog.py --connections 300 --duration 5
    bench/attacks/connection_hog.py --per-source 2000         # no per-source cap: the short idle timeout
                                                              # near the cap still sheds the hog
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

import attacklib as al
import dns.message
import dns.query


def probe(port: int, source: str, timeout: float) -> float | None:
    """One fresh connection, one query (dnspython, in its own thread so that the hog's event loop
    does not delay it): the seconds to the answer, or None when there was none."""
    query = dns.message.make_query(al.GLOBAL_NAME, "A")
    started = time.monotonic()
    try:
        reply = dns.query.tcp(query, "127.0.0.1", port=port, source=source, timeout=timeout)
    except Exception:
        return None
    return time.monotonic() - started if reply.answer else None


async def attack(args: argparse.Namespace, port: int) -> tuple[al.Holders, list[float | None]]:
    # a hog that reconnects as often as it queries: each connection costs the server once per interval
    hog = al.Holders(port, [args.hog_source] * args.connections, args.query_interval, args.query_interval)
    running = asyncio.create_task(hog.run())
    loop = asyncio.get_running_loop()
    results: list[float | None] = []
    started = time.monotonic()
    await asyncio.sleep(min(args.duration / 4, 2.0))  # let the hog take what it can first
    while time.monotonic() - started < args.duration:
        results.append(await loop.run_in_executor(None, probe, port, args.probe_source, 1.0))
        await asyncio.sleep(0.2)
    hog.stop.set()
    await running
    return hog, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, help="attack a dnsd already listening on 127.0.0.1:PORT")
    parser.add_argument("--hog-source", type=al.loopback, default="127.0.0.2")
    parser.add_argument("--probe-source", type=al.loopback, default="127.0.0.3")
    parser.add_argument("--connections", type=al.bounded(al.MAX_CONNECTIONS), default=1024)
    parser.add_argument("--query-interval", type=al.bounded(60.0, float), default=5.0,
                        help="seconds between the hog's queries on each connection")
    parser.add_argument("--duration", type=al.bounded(al.MAX_DURATION, float), default=20.0)
    parser.add_argument("--max-connections", type=int, help="the started dnsd's server.tcp_max_connections")
    parser.add_argument("--per-source", type=int, help="the started dnsd's server.tcp_max_connections_per_source")
    args = parser.parse_args()
    if args.hog_source == args.probe_source:
        parser.error("--hog-source and --probe-source must differ")
    al.raise_own_open_files_limit()

    server = {key: value for key, value in (("tcp_max_connections", args.max_connections),
                                             ("tcp_max_connections_per_source", args.per_source)) if value}
    if args.port:
        hog, results = asyncio.run(attack(args, args.port))
        stats = {}
    else:
        with al.Dnsd(al.example_config(**server)) as dnsd:
            hog, results = asyncio.run(attack(args, dnsd.port))
            stats = dnsd.metrics()
    answered = [r for r in results if r is not None]
    slow = [r for r in answered if r >= 0.1]
    print(f"hog {args.hog_source}: {args.connections} connections wanted, at most {hog.peak} held at once, "
          f"{hog.opened} opened, {hog.closed_by_server} closed by the server")
    print(f"probe {args.probe_source}: {len(answered)} of {len(results)} answered; "
          f"{al.describe_latencies(answered)}")
    for name, value in sorted(stats.items()):
        if name.startswith("geotm_tcp_"):
            print(f"  {name} {value:g}")
    if results and len(answered) == len(results) and not slow:
        print("PASS: every probe from another source was answered within 100 ms")
        return 0
    print(f"FAIL: {len(results) - len(answered)} probes unanswered, {len(slow)} slower than 100 ms")
    return 1


if __name__ == "__main__":
    sys.exit(main())
