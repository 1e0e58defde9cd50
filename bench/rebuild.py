"""Rebuild cost: how long config load, table compile and a health swap take for 1, 100 and 1,000
registries of 3-6 replicas, and whether queries keep flowing while a real dnsd reloads.

    .venv/bin/python bench/rebuild.py            # table of timings (medians of 3)
    .venv/bin/python bench/rebuild.py --live     # also: reload a running dnsd under query load
"""
from __future__ import annotations

import argparse
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dnsd.config import parse_config_text  # noqa: E402
from dnsd.health import EndpointHealth, HealthSnapshot, Status  # noqa: E402
from dnsd.runtime import build_plans, new_snapshot  # noqa: E402

REGIONS = ["eastus", "westus", "westeurope", "northeurope", "southeastasia", "japaneast"]


def config_text(registries: int, seed: int = 7) -> str:
    """A config with `registries` registries of 3-6 replicas each, a VNet view holding a tenth of them."""
    rng = random.Random(seed)
    data = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    data["regions"] = REGIONS
    data["latency_ms"] = {a: {b: 20 + 30 * abs(i - j) for j, b in enumerate(REGIONS) if j > i}
                          for i, a in enumerate(REGIONS) if i < len(REGIONS) - 1}
    data["health"] = {}
    data["admin"] = {"listen": "off"}
    data["registries"] = {}
    endpoints = {}
    address = 0x0A640000  # 10.100.0.0
    for index in range(registries):
        name = f"reg{index:04d}"
        chosen = rng.sample(REGIONS, rng.randint(3, 6))
        replicas = {}
        for region in chosen:
            address += 1
            replicas[region] = {"addresses": [f"{address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}."
                                              f"{address & 255}"], "weight": rng.randint(1, 100)}
        data["registries"][name] = {"routing": rng.choice(["performance", "weighted", "priority"]),
                                    "replicas": replicas}
        if index % 10 == 0:
            endpoints[name] = {"global": "10.1.0.4", "data": {r: "10.1.0.5" for r in chosen},
                               "regional": {r: "10.1.0.6" for r in chosen}}
    data["views"] = {"corp-vnet": {"sources": ["127.0.0.64/26"], "private_endpoints": endpoints}}
    return yaml.safe_dump(data, sort_keys=False)


def timed(function, runs: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def measure(counts: list[int], runs: int) -> list[dict]:
    rows = []
    for count in counts:
        text = config_text(count)
        load_s, config = timed(lambda: parse_config_text(text, f"{count}.yaml"), runs)
        compile_s, snapshot = timed(lambda: new_snapshot(config), runs)
        first = config.registries[0]
        degraded = HealthSnapshot().with_status(first.name, first.replicas[0].name,
                                                EndpointHealth(Status.DEGRADED, "bench", 0.0))
        swap_s, _ = timed(lambda: build_plans(config, degraded, snapshot.overrides), runs)
        entries = sum(len(table) for table in snapshot.compiled.exact)
        rows.append({"registries": count, "replicas": sum(len(r.replicas) for r in config.registries),
                     "answers": entries, "load_s": load_s, "compile_s": compile_s, "health_swap_s": swap_s})
    return rows


def live_reload(count: int, seconds: float = 6.0) -> dict:
    """Reload a running dnsd (SIGHUP, big config) while a client sends queries; count the lost ones."""
    workdir = Path(tempfile.mkdtemp(prefix="geotm-rebuild-"))
    path = workdir / "big.yaml"
    path.write_text(config_text(count))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "dnsd", "serve", "--config", str(path), "--listen",
                                f"127.0.0.1:{port}", "--admin-listen", "off", "--log-format", "json"],
                               cwd=ROOT, stderr=subprocess.PIPE, text=True)
    import dns.message
    wire = dns.message.make_query("reg0001.azurecr.test", "A").to_wire()
    sent = answered = 0
    worst = 0.0
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 60
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            while time.monotonic() < deadline:  # wait until it answers (big configs take a while to compile)
                sock.sendto(wire, ("127.0.0.1", port))
                try:
                    sock.recv(4096)
                    break
                except socket.timeout:
                    continue
            sock.settimeout(2.0)

            def reloader():
                for _ in range(3):
                    if stop.wait(seconds / 4):
                        return
                    process.send_signal(signal.SIGHUP)

            thread = threading.Thread(target=reloader)
            thread.start()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.perf_counter()
                sock.sendto(wire, ("127.0.0.1", port))
                sent += 1
                try:
                    sock.recv(4096)
                    answered += 1
                    worst = max(worst, time.perf_counter() - started)
                except socket.timeout:
                    pass
            stop.set()
            thread.join()
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
    reloads = log.count('"config_reloaded"')
    return {"registries": count, "queries": sent, "answered": answered, "lost": sent - answered,
            "worst_latency_ms": worst * 1000, "reloads": reloads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,100,1000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--live", action="store_true")
    args = parser.parse_args()
    rows = measure([int(c) for c in args.counts.split(",")], args.runs)
    print(f"{'registries':>10} {'replicas':>8} {'answers':>8} {'load':>9} {'compile':>9} {'health swap':>12}")
    for row in rows:
        print(f"{row['registries']:>10} {row['replicas']:>8} {row['answers']:>8} {row['load_s']*1000:>7.0f}ms "
              f"{row['compile_s']*1000:>7.0f}ms {row['health_swap_s']*1000:>10.2f}ms")
    print("load = YAML + validation; compile = every answer pre-packed; health swap = new routing plans "
          "(what a probe verdict costs). A config reload costs load + compile, off the event loop.")
    if args.live:
        result = live_reload(int(args.counts.split(",")[-1]))
        print(f"live: {result['reloads']} reloads of a {result['registries']}-registry config under a sequential "
              f"query stream: {result['answered']}/{result['queries']} answered, {result['lost']} lost, "
              f"worst latency {result['worst_latency_ms']:.1f} ms")
        return 1 if result["lost"] else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
