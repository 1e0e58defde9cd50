#!/usr/bin/env python3
"""File-descriptor exhaustion (issue 9, item 4): dnsd runs under an open-files limit (1,024 by
default, the common soft limit) with a fake probes feed that says contoso/eastus is degraded, and
about as many TCP clients as that limit, from many 127.x.y.z sources, connect and keep querying.
PASS when, for the whole run, the global name never answers the degraded replica, the admin API
answers every time and the feed keeps being polled. Loopback only; bounded in clients and time.

    bench/attacks/fd_exhaustion.py                            # limit 1,024, 1,100 clients, 20 s
    bench/attacks/fd_exhaustion.py --nofile 256 --clients 400 --duration 6
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

import attacklib as al

DEGRADED, HEALTHY = "127.0.0.11", "127.0.0.12"  # contoso's eastus and westeurope in config/example.yaml


async def attack(args: argparse.Namespace, dnsd: al.Dnsd, feed: al.FakeFeed) -> dict:
    sources = [al.source_address(i, args.per_source_clients) for i in range(args.clients)]
    clients = al.Holders(dnsd.port, sources, args.query_interval)
    running = asyncio.create_task(clients.run())
    loop = asyncio.get_running_loop()
    seen: dict[str | None, int] = {}
    admin_failures = checks = 0
    polls_before, started = feed.polls, time.monotonic()
    while time.monotonic() - started < args.duration:
        address = await loop.run_in_executor(None, dnsd.global_address)
        seen[address] = seen.get(address, 0) + 1
        admin_failures += not await loop.run_in_executor(None, dnsd.admin_answers)
        checks += 1
        await asyncio.sleep(0.25)
    elapsed = time.monotonic() - started
    clients.stop.set()
    await running
    return {"seen": seen, "admin_failures": admin_failures, "checks": checks, "elapsed": elapsed,
            "polls": feed.polls - polls_before, "peak": clients.peak, "opened": clients.opened}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nofile", type=al.bounded(1 << 20), default=1024,
                        help="dnsd's RLIMIT_NOFILE (soft and hard)")
    parser.add_argument("--clients", type=al.bounded(al.MAX_CONNECTIONS), default=1100)
    parser.add_argument("--per-source-clients", type=al.bounded(1000), default=10,
                        help="clients sharing one 127.x.y.z source address")
    parser.add_argument("--query-interval", type=al.bounded(60.0, float), default=5.0)
    parser.add_argument("--duration", type=al.bounded(al.MAX_DURATION, float), default=20.0)
    parser.add_argument("--poll", type=al.bounded(10.0, float), default=0.5, help="health.poll_interval")
    parser.add_argument("--ttl", type=al.bounded(60.0, float), default=3.0, help="health.ttl")
    args = parser.parse_args()
    al.raise_own_open_files_limit()

    with al.FakeFeed("contoso", ["eastus", "westeurope", "southeastasia"], degraded="eastus") as feed:
        config = al.example_config()
        config["health"] = {"feeds": [feed.url], "poll_interval": f"{args.poll}s", "ttl": f"{args.ttl}s"}
        with al.Dnsd(config, nofile=args.nofile) as dnsd:
            deadline = time.monotonic() + 5
            while dnsd.global_address() != HEALTHY and time.monotonic() < deadline:
                time.sleep(0.1)
            result = asyncio.run(attack(args, dnsd, feed))
            stats = dnsd.metrics()
            limits = dnsd.events("open_files_limit") + dnsd.events("tcp_max_connections_reduced")
            trouble = {name: len(dnsd.events(name)) for name in
                       ("health_expired", "health_feed_error", "tcp_accept_failed", "admin_token_unreadable")}
    for entry in limits:
        print(f"dnsd {entry['event']}: " + ", ".join(f"{k}={v}" for k, v in entry.items()
                                                     if k not in ("event", "timestamp", "level")))
    sources = len({al.source_address(i, args.per_source_clients) for i in range(args.clients)})
    print(f"clients: {args.clients} from {sources} sources; {result['opened']} connections opened "
          f"(at most {result['peak']} held at once, as the clients saw it)")
    print(f"global name answers: {result['seen']}; admin API failures: {result['admin_failures']} of "
          f"{result['checks']}; feed polls: {result['polls']} in {result['elapsed']:.1f}s")
    for name, value in sorted(stats.items()):
        if name.startswith("geotm_tcp_") or "expired" in name:
            print(f"  {name} {value:g}")
    if any(trouble.values()):
        print(f"  log events: {trouble}")
    polls_needed = result["elapsed"] / args.poll / 2
    ok = set(result["seen"]) == {HEALTHY} and result["admin_failures"] == 0 and result["polls"] >= polls_needed \
        and not any(trouble.values())
    if ok:
        print(f"PASS: the global name kept avoiding the degraded replica ({DEGRADED}), the feed kept being "
              "polled and the admin API kept answering")
        return 0
    print("FAIL: TCP clients changed routing or starved the feed or the admin API")
    return 1


if __name__ == "__main__":
    sys.exit(main())
