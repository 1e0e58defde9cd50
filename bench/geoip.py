"""What a GeoIP database costs dnsd: the per-query cost of the engine with static client networks and
with a database (the small test one, and one the size of GeoLite2 City), and the time and memory of
compiling the big one. In-process (no sockets, no peers): the query engine's own work per query, the
part the database changes.

    .venv/bin/python bench/geoip.py                          # makes the big database once (~6 min), keeps it
    .venv/bin/python bench/geoip.py --big /tmp/geotm-geoip-big.mmdb --queries 100000

Queries: the global name (performance routing, so every answer places its client), each with an ECS
subnet drawn with a fixed seed (80% IPv4 /24 anywhere in 1.0.0.0-223.255.255.255, 20% IPv6 /56 in
2001:200::/23, where the big database's IPv6 networks are), in two mixes (see queries()): "zipf", as
DNS traffic comes, and "uniform", a new subnet every query. The packet cache is emptied before each
query, so every query takes the full path (parse, view, client region, answer): the cost a database
adds, not hidden by repeats (a server's packet cache answers a repeat before any of it). Measured in
CPU time, the engines taking turns over the same 2,000 queries, `--rounds` times; the figure is each
one's median ratio to the static-networks engine in the same round (load elsewhere slows a whole
round, and cancels out), see compare().

Memory: a child process loads the big database once and reports the compile time, its peak and
settled resident memory (VmHWM, VmRSS) over the process before loading, and the compiled table's own
size; then a real `dnsd serve` with each config reports its resident memory once it answers.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]  # bench's modules, and dnsd when not installed
import geoipdb  # noqa: E402
from peerconfig import geotm_bench_document  # noqa: E402

from dnsd.common.children import Child, free_port  # noqa: E402
from dnsd.config import parse_config_text, read_document  # noqa: E402
from dnsd.serving.runtime import QueryEngine, new_snapshot  # noqa: E402

EXAMPLE = ROOT / "config" / "example.yaml"
GEOIP = ROOT / "config" / "geoip.yaml"
BIG_DEFAULT = Path(tempfile.gettempdir()) / "geotm-geoip-big.mmdb"


def engine(config_path: Path, database: Path | None = None) -> QueryEngine:
    data = read_document(config_path)
    if database is not None:
        data["clients"]["geoip"]["database"] = str(database)
    data["health"] = {}
    config = parse_config_text(yaml.safe_dump(data, sort_keys=False), str(config_path), config_path.parent)
    return QueryEngine(new_snapshot(config))


def subnets(rng: random.Random, count: int) -> list[tuple[str, int]]:
    """ECS subnets: 80% IPv4 /24 anywhere in 1.0.0.0-223.255.255.255, 20% IPv6 /56 in 2001:200::/23."""
    v6_base = int(ipaddress.IPv6Address("2001:200::"))
    out = []
    for _ in range(count):
        if rng.random() < 0.8:
            out.append((str(ipaddress.IPv4Address(rng.randrange(1 << 24, 224 << 24) & ~0xFF)), 24))
        else:
            out.append((str(ipaddress.IPv6Address((v6_base + rng.getrandbits(105)) & ~((1 << 72) - 1))), 56))
    return out


def queries(count: int, mix: str, seed: int = 7) -> list[bytes]:
    """Wire queries for the global name with ECS. mix "uniform": a subnet of its own each (every lookup
    somewhere else in the table: the worst case for the CPU's caches); "zipf": drawn from 100,000
    client subnets with Zipf weights (the k-th most active asks 1/k as often as the first), as DNS
    traffic is: a few resolver populations ask most queries."""
    import dns.edns
    import dns.message

    rng = random.Random(seed)
    if mix == "uniform":
        chosen = subnets(rng, count)
    else:
        population = subnets(rng, 100_000)
        chosen = rng.choices(population, weights=[1 / k for k in range(1, len(population) + 1)], k=count)
    return [dns.message.make_query("contoso.azurecr.test", "A", use_edns=0,
                                   options=[dns.edns.ECSOption(address, prefix)]).to_wire()
            for address, prefix in chosen]


def per_query_us(engine_: QueryEngine, wires: list[bytes]) -> float:
    """One pass over the queries, the packet cache emptied before each: microseconds per query."""
    handle = engine_.handle
    engine_.cache = cache = {}
    started = time.process_time()  # CPU time: the time this process was not running never counts
    for wire in wires:
        cache.clear()
        handle(wire, "127.0.0.1", False)
    return (time.process_time() - started) / len(wires) * 1e6


CHUNK = 2000  # queries per engine per round


def compare(engines: dict[str, QueryEngine], wires: list[bytes], rounds: int, chunk: int = CHUNK
            ) -> dict[str, dict[str, float]]:
    """Each engine's cost against the first one's, measured in pairs: in each of `rounds` rounds every
    engine answers the same `chunk` queries, in a rotating order; per engine, the median over the rounds
    of its time divided by the first engine's in the same round (load elsewhere on a shared machine
    slows a whole round, so it cancels out), and its fastest pass in microseconds per query."""
    names = list(engines)
    ratios: dict[str, list[float]] = {name: [] for name in names}
    best = {name: float("inf") for name in names}
    for round_ in range(rounds):
        part = wires[(round_ * chunk) % len(wires):][:chunk]
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        took = {name: per_query_us(engines[name], part) for name in order}
        for name in names:
            ratios[name].append(took[name] / took[names[0]])
            best[name] = min(best[name], took[name])
    return {name: {"best_us": best[name], "ratio": statistics.median(ratios[name])} for name in names}


COMPILE_CHILD = """
import gc, json, sys, time
sys.path[:0] = {paths!r}
from dnsd.config import load_config
import dataclasses
from dnsd.model import GeoIPSettings
from dnsd.routing import geoip

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
base = load_config({config!r}).topology
topology = dataclasses.replace(base, geoip=GeoIPSettings({database!r}))
gc.collect()
before = status("VmRSS")
started = time.perf_counter()
table = geoip.load(topology)
seconds = time.perf_counter() - started
peak = status("VmHWM")
gc.collect()
after = status("VmRSS")
print(json.dumps(dict(seconds=seconds, peak_over_start=peak - before, settled_over_start=after - before,
                      table_bytes=table.stats.table_bytes, describe=table.stats.describe())))
"""


def compile_cost(database: Path) -> dict:
    code = COMPILE_CHILD.format(paths=[str(ROOT)], config=str(GEOIP), database=str(database))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(run.stderr)
    return json.loads(run.stdout)


def serving_rss(config_path: Path, database: Path | None = None) -> int:
    """Resident memory (bytes) of a real `dnsd serve` with this config once it answers: what the
    database costs a running server, its mapped file pages included."""
    import dns.message
    import dns.query

    with tempfile.TemporaryDirectory(prefix="geotm-geoip-rss-") as tmp:
        port = free_port()
        doc = geotm_bench_document(config_path, tmp, port)
        if database is not None:
            doc["clients"]["geoip"]["database"] = str(database)
        path = Path(tmp) / "dnsd.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

        def answers() -> bool:
            try:
                dns.query.udp(dns.message.make_query("azurecr.test.", "SOA"), "127.0.0.1", port=port, timeout=0.5)
            except Exception:
                return False
            return True

        with Child([sys.executable, "-m", "dnsd", "serve", "--config", str(path), "--log-level", "warning"],
                   name="dnsd", cwd=ROOT) as child:
            child.wait_ready(answers, timeout=300)
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=Path, default=BIG_DEFAULT, help="the big database (made when missing)")
    parser.add_argument("--networks", type=int, default=3_500_000, help="networks of a big database made here")
    parser.add_argument("--queries", type=int, default=50_000, help="queries of the zipf mix (uniform: one per "
                                                                     "query the run makes)")
    parser.add_argument("--rounds", type=int, default=120, help="rounds of 2,000 queries per engine")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    if not args.big.exists():
        print(f"making {args.big} ({args.networks:,} networks; minutes)...", file=sys.stderr, flush=True)
        print(geoipdb.write(str(args.big), args.networks), file=sys.stderr)
    results: dict = {"compile": compile_cost(args.big)}
    print(f"compile: {results['compile']['describe']}; peak RSS +{results['compile']['peak_over_start'] / 2**20:.0f} "
          f"MiB, settled +{results['compile']['settled_over_start'] / 2**20:.0f} MiB", flush=True)
    results["serving_rss"] = {"static networks (example.yaml)": serving_rss(EXAMPLE),
                              "database: config/geoip-test.mmdb": serving_rss(GEOIP),
                              f"database: {args.big.name}": serving_rss(GEOIP, args.big)}
    print("dnsd serve RSS: " + ", ".join(f"{name} {rss / 2**20:.0f} MiB"
                                         for name, rss in results["serving_rss"].items()), flush=True)
    engines = {"static networks (example.yaml)": engine(EXAMPLE),
               "database: config/geoip-test.mmdb": engine(GEOIP),
               f"database: {args.big.name}": engine(GEOIP, args.big)}
    results["per_query_us"] = {}
    for mix in ("zipf", "uniform"):
        # uniform: as many queries as the run asks, so no subnet ever comes again (the worst case)
        count = args.rounds * CHUNK if mix == "uniform" else args.queries
        costs = results["per_query_us"][mix] = compare(engines, queries(count, mix), args.rounds)
        for name, cost in costs.items():
            print(f"{mix:<8} {name:<42} {cost['best_us']:6.2f} us/query at best, "
                  f"{(cost['ratio'] - 1) * 100:+5.1f}% against static networks (median of paired rounds)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
