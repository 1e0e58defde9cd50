"""Soak: a real dnsd under a steady dnsperf load for a bounded time, with its memory (RSS) sampled;
memory must stay flat (the packet cache and counters are bounded).

    .venv/bin/python bench/soak.py --minutes 10 --qps 30000
"""
from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

MIX = [("contoso.azurecr.test", "A", 60), ("contoso.eastus.geo.azurecr.test", "A", 13),
       ("contoso.westeurope.data.azurecr.test", "A", 12), ("contoso.azurecr.test", "AAAA", 10)]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--qps", type=int, default=30000, help="offered load (dnsperf -Q)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth after warm-up")
    args = parser.parse_args()
    if not shutil.which("dnsperf"):
        print("soak: dnsperf is not installed (apt-get install dnsperf)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="geotm-soak-"))
    data = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    data["health"] = {}
    data["admin"] = {"listen": "off"}
    config = work / "soak.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    queries = work / "queries.txt"
    lines = [f"{name} {qtype}" for name, qtype, weight in MIX for _ in range(weight)]
    lines += [f"missing{i}.azurecr.test A" for i in range(5)]  # 5% NXDOMAIN, distinct names
    queries.write_text("\n".join(lines) + "\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "dnsd", "serve", "--config", str(config),
                               "--listen", f"127.0.0.1:{port}", "--log-format", "json"], cwd=ROOT,
                              stderr=subprocess.DEVNULL)
    load = None
    samples: list[tuple[float, int]] = []
    try:
        time.sleep(2.0)
        seconds = int(args.minutes * 60)
        load = subprocess.Popen(["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d",
                                 str(queries), "-l", str(seconds), "-Q", str(args.qps), "-c", "4"],
                                stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        while load.poll() is None and time.monotonic() - started < seconds + 30:
            samples.append((time.monotonic() - started, rss_kib(server.pid)))
            print(f"t={samples[-1][0]:6.0f}s rss={samples[-1][1] / 1024:7.1f} MiB", flush=True)
            time.sleep(args.sample)
        output = load.communicate(timeout=60)[0]
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    summary = [line.strip() for line in output.splitlines() if "Queries" in line or "lost" in line.lower()]
    print("\n".join(summary))
    warm = [rss for at, rss in samples if at >= min(60.0, args.minutes * 60 / 4)]
    if len(warm) < 2:
        print("soak: too short to judge memory")
        return 0
    growth = (max(warm) - warm[0]) / warm[0]
    verdict = "flat" if growth <= args.max_growth else "GROWING"
    print(f"memory after warm-up: {warm[0] / 1024:.1f} -> {warm[-1] / 1024:.1f} MiB "
          f"(max {max(warm) / 1024:.1f}), growth {growth * 100:.1f}%: {verdict}")
    return 0 if verdict == "flat" else 1


if __name__ == "__main__":
    sys.exit(main())
