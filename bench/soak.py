"""Soak: one real dnsd process (core 0) under a steady, mixed dnsperf load (core 1) for a bounded
time, at half of the maximum qps first measured with the same mix, its resident memory sampled.
Passes when no answer is lost, every rcode is one the mix expects, the NXDOMAIN share is the
query files' share, and resident memory after warm-up grows less than 5%.

    .venv/bin/python bench/soak.py                           # max (10 s), then 10 minutes at half of it
    .venv/bin/python bench/soak.py --minutes 2 --qps 30000   # a fixed rate, no max run

dnsperf puts one source address and one EDNS option on a whole run, so the mix is several dnsperf
processes at once (STREAMS), each with its own query file, source address and share of the rate.
Response rate limiting is off (server.rate_limit removed from the config): a limiter drops
answers on purpose. Exit status: 0 passed, 1 failed, 2 a tool is missing.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dns.message
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]  # bench's modules, and dnsd when not installed
from benchlib import ecs_option_hex  # noqa: E402
from dnsperfout import parse_dnsperf  # noqa: E402

from dnsd import names  # noqa: E402
from dnsd.common.children import Child, ChildFailed, free_port  # noqa: E402
from dnsd.config import load_config, read_document  # noqa: E402

EXAMPLE = ROOT / "config" / "example.yaml"
EXPECTED_RCODES = {"NOERROR", "NXDOMAIN"}
NX_TOLERANCE = 0.02  # absolute: measured NXDOMAIN share vs the query files' share


@dataclass(frozen=True)
class Stream:
    """One dnsperf process: its share of the total rate, source address, ECS subnet (on every
    query) and query file: (name, qtype, weight) lines plus `nxdomain` distinct missing names."""
    name: str
    share: float
    source: str
    ecs: str | None
    queries: tuple[tuple[str, str, int], ...]
    nxdomain: int = 0
    nx_prefix: str = "nx"


def _chain() -> tuple[tuple[str, str, int], ...]:
    """(name, qtype, weight) of every kind of answer of the example's first registry, for its
    replicas in order (eastus, westeurope, southeastasia): global chain, privatelink hop, regional and
    data names, NODATA after a chain, SOA and NS."""
    example = load_config(EXAMPLE)
    zone, registry = example.zone.name, example.registries[0]
    reg = registry.name
    near, middle, far = (replica.name for replica in registry.replicas)
    return ((names.global_name(reg, zone), "A", 50), (names.privatelink_name(reg, zone), "A", 6),
            (names.regional_name(reg, near, zone), "A", 6), (names.regional_name(reg, middle, zone), "A", 4),
            (names.regional_name(reg, far, zone), "A", 3), (names.data_name(reg, near, zone), "A", 6),
            (names.data_name(reg, middle, zone), "A", 4), (names.global_name(reg, zone), "AAAA", 10),
            (names.regional_name(reg, near, zone), "AAAA", 2), (zone, "SOA", 2), (zone, "NS", 2))


_CHAIN = _chain()
ZONE = _CHAIN[-1][0]

# config/example.yaml: 127.0.0.0/26 is eastus, 127.0.0.64/26 the corp-vnet view (private answers),
# 203.0.113.0/24 southeastasia (by ECS); 127.0.0.200 is in no client network (default region)
STREAMS = (
    Stream("public", 0.40, "127.0.0.1", None, _CHAIN, nxdomain=5),
    Stream("ecs", 0.20, "127.0.0.1", "203.0.113.0/24", _CHAIN, nxdomain=5, nx_prefix="nx-ecs"),
    Stream("vnet", 0.15, "127.0.0.70", None, _CHAIN, nxdomain=5, nx_prefix="nx-vnet"),
    Stream("other-net", 0.15, "127.0.0.200", None, _CHAIN, nxdomain=5, nx_prefix="nx-other"),
    # random-subdomain style: 60,000 distinct names, more than the packet cache holds (50,000), so
    # the cache fills and is cleared again and again during the soak
    Stream("nx-churn", 0.10, "127.0.0.201", None, (), nxdomain=60_000, nx_prefix="r"),
)


def query_lines(stream: Stream) -> list[str]:
    lines = [f"{name} {qtype}" for name, qtype, weight in stream.queries for _ in range(weight)]
    lines += [f"{stream.nx_prefix}{i}.{ZONE} A" for i in range(stream.nxdomain)]
    return lines


def nx_share(stream: Stream) -> float:
    return stream.nxdomain / len(query_lines(stream))


def expected_nx_share(streams: tuple[Stream, ...] = STREAMS) -> float:
    return sum(s.share * nx_share(s) for s in streams) / sum(s.share for s in streams)


def split_qps(total: int, streams: tuple[Stream, ...] = STREAMS) -> dict[str, int]:
    """Each stream's -Q, summing to `total` (the largest stream takes the rounding)."""
    if total < len(streams) * 10:
        raise ValueError(f"--qps {total}: at least {len(streams) * 10} (10 per dnsperf stream)")
    weights = sum(s.share for s in streams)
    rates = {s.name: max(1, int(total * s.share / weights)) for s in streams}
    largest = max(streams, key=lambda s: s.share).name
    rates[largest] += total - sum(rates.values())
    return rates


def dnsperf_argv(stream: Stream, port: int, query_file: Path, seconds: int, qps: int | None) -> list[str]:
    """A bounded run: -l seconds; -Q qps unless measuring the maximum."""
    argv = ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-a", stream.source,
            "-d", str(query_file), "-l", str(seconds), "-c", "2", "-q", "500", "-t", "5", "-b", "4096"]
    if qps is not None:
        argv += ["-Q", str(qps)]
    if stream.ecs:
        argv += ["-E", f"8:{ecs_option_hex(stream.ecs)}"]
    return argv


def soak_config(example: dict) -> dict:
    """The example config, standalone: no probes feed, no admin API, no response rate limiting."""
    data = dict(example)
    data["health"] = {}
    data["admin"] = {"listen": "off"}
    data["server"] = {k: v for k, v in (data.get("server") or {}).items() if k != "rate_limit"}
    return data


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def memory_growth(samples: list[tuple[float, int]], warmup: float) -> tuple[int, int, int, int, float] | None:
    """RSS after warm-up: (peak of the first third, peak of the last third, min, max, growth from the
    first peak to the last), or None with fewer than 3 samples. Peaks, because the packet cache makes
    a saw-tooth (it fills, then is cleared whole): a leak raises the peaks, the saw-tooth does not."""
    warm = [rss for at, rss in samples if at >= warmup]
    if len(warm) < 3:
        return None
    third = len(warm) // 3
    first, last = max(warm[:third]), max(warm[-third:])
    return first, last, min(warm), max(warm), (last - first) / first


def judge(samples: list[tuple[float, int]], results: dict[str, dict], warmup: float, max_growth: float,
          streams: tuple[Stream, ...] = STREAMS) -> list[tuple[bool, str]]:
    """Every verdict as (passed, line)."""
    verdicts = []
    sent = sum(r.get("queries_sent", 0) for r in results.values())
    lost = sum(r.get("queries_lost", 0) for r in results.values())
    verdicts.append((sent > 0 and lost == 0, f"answers lost: {lost} of {sent} queries"))
    rcodes: dict[str, int] = {}
    for result in results.values():
        for code, count in result.get("rcodes", {}).items():
            rcodes[code] = rcodes.get(code, 0) + count
    unexpected = {code: n for code, n in rcodes.items() if code not in EXPECTED_RCODES}
    verdicts.append((not unexpected, f"rcodes {rcodes}" + (f": unexpected {unexpected}" if unexpected else "")))
    answered = sum(rcodes.values())
    share = rcodes.get("NXDOMAIN", 0) / answered if answered else 0.0
    want = sum(s.share * nx_share(s) for s in streams) / sum(s.share for s in streams)
    verdicts.append((abs(share - want) <= NX_TOLERANCE,
                     f"NXDOMAIN share {share * 100:.1f}% (query files: {want * 100:.1f}%)"))
    memory = memory_growth(samples, warmup)
    if memory is None:
        verdicts.append((False, f"memory: too few samples after the {warmup:g}s warm-up to judge"))
    else:
        first, last, low, high, growth = memory
        verdicts.append((growth < max_growth,
                         f"memory after warm-up: peak {first / 1024:.1f} MiB in the first third, {last / 1024:.1f} "
                         f"MiB in the last (range {low / 1024:.1f}-{high / 1024:.1f}), growth {growth * 100:.1f}% "
                         f"(limit {max_growth * 100:g}%)"))
    return verdicts


def sustained(results: dict[str, dict], qps: int, seconds: int, at_least: float = 0.9) -> tuple[bool, str]:
    """Whether dnsd kept up with the offered rate (dnsperf holds back when answers are slow)."""
    sent = sum(r.get("queries_sent", 0) for r in results.values())
    rate = sent / seconds if seconds else 0.0
    return rate >= at_least * qps, f"load sustained: {rate:,.0f} of {qps:,} qps sent ({rate / qps * 100:.0f}%)"


def answers_soa(port: int) -> bool:
    """Whether dnsd on the port answers an SOA query for the zone (within 0.2 s)."""
    query = dns.message.make_query(ZONE, "SOA")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(query.to_wire(), ("127.0.0.1", port))
        return sock.recv(512)[:2] == query.to_wire()[:2]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_streams(port: int, files: dict[str, Path], seconds: int, rates: dict[str, int] | None,
                on_tick=None, tick: float = 10.0) -> dict[str, dict]:
    """Every stream's dnsperf at once, bounded by -l and by a hard kill at seconds + 60."""
    procs = {s.name: Child(dnsperf_argv(s, port, files[s.name], seconds, rates and rates[s.name]),
                           name=f"dnsperf-{s.name}").start()
             for s in STREAMS}
    started = time.monotonic()
    try:
        while any(p.running() for p in procs.values()) and time.monotonic() - started < seconds + 60:
            if on_tick:
                on_tick(time.monotonic() - started)
            time.sleep(min(tick, max(0.1, seconds + 60 - (time.monotonic() - started))))
    finally:
        for proc in procs.values():
            proc.stop()
    results = {}
    for name, proc in procs.items():
        output = proc.log_text()
        try:
            results[name] = parse_dnsperf(output)
        except ValueError:
            results[name] = {"error": output.strip()[-500:]}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--seconds", type=int, help="length of the soak in seconds (overrides --minutes)")
    parser.add_argument("--qps", type=int, help="offered load; default: half of the measured maximum")
    parser.add_argument("--max-seconds", type=int, default=10, help="length of the maximum-qps run")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the memory verdict")
    parser.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth after warm-up")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    missing = [tool for tool in ("dnsperf", "taskset") if not shutil.which(tool)]
    if missing:
        print(f"soak: {' '.join(missing)} not installed (apt-get install dnsperf util-linux)", file=sys.stderr)
        return 2
    seconds = args.seconds or int(args.minutes * 60)
    work = Path(tempfile.mkdtemp(prefix="geotm-soak-"))
    config = work / "soak.yaml"
    config.write_text(yaml.safe_dump(soak_config(read_document(EXAMPLE)), sort_keys=False))
    files = {}
    for stream in STREAMS:
        files[stream.name] = work / f"{stream.name}.txt"
        files[stream.name].write_text("\n".join(query_lines(stream)) + "\n")
    port = free_port()
    server = Child(["taskset", "-c", "0", sys.executable, "-m", "dnsd", "serve", "--config", str(config),
                    "--listen", f"127.0.0.1:{port}", "--log-level", "warning"], work / "dnsd.log", name="dnsd",
                   cwd=ROOT).start()
    report: dict = {"load_before": loadavg(), "streams": {s.name: {"share": s.share, "source": s.source,
                                                                    "ecs": s.ecs} for s in STREAMS}}
    samples: list[tuple[float, int]] = []
    try:
        try:
            server.wait_ready(lambda: answers_soa(port), 20.0)
        except ChildFailed:
            print(f"soak: dnsd did not start: {server.log_text()[-2000:]}", file=sys.stderr)
            return 1
        qps = args.qps
        if qps is None:
            run_streams(port, files, 2, None)  # warm-up, discarded
            top = run_streams(port, files, args.max_seconds, None)
            maximum = sum(r.get("qps", 0.0) for r in top.values())
            qps = int(maximum / 2)
            report["max_qps"], report["max_run"] = round(maximum), top
            print(f"maximum with this mix: {maximum:,.0f} qps ({args.max_seconds} s); soak at half: {qps:,} qps",
                  flush=True)
        try:
            rates = split_qps(qps)
        except ValueError as err:
            print(f"soak: {err}", file=sys.stderr)
            return 2
        print(f"soak: {seconds} s at {qps:,} qps: " + ", ".join(f"{k} {v:,}" for k, v in rates.items())
              + f"; load average before {report['load_before']}", flush=True)

        def sample(at: float) -> None:
            samples.append((at, rss_kib(server.pid)))
            print(f"t={at:6.0f}s rss={samples[-1][1] / 1024:7.1f} MiB", flush=True)
        results = run_streams(port, files, seconds, rates, on_tick=sample, tick=args.sample)
    finally:
        server.stop(grace=10)
        shutil.rmtree(work, ignore_errors=True)
    report.update(qps=qps, seconds=seconds, rates=rates, results=results, rss_kib=samples, load_after=loadavg())
    for name, result in results.items():
        print(f"  {name:<10} sent {result.get('queries_sent', '?'):>10} lost {result.get('queries_lost', '?'):>4} "
              f"qps {result.get('qps', 0):>9,.0f} avg {result.get('avg_latency_s', 0) * 1000:.3f} ms "
              f"max {result.get('max_latency_s', 0) * 1000:.1f} ms "
              f"{result.get('error', '')}")
    verdicts = judge(samples, results, args.warmup, args.max_growth) + [sustained(results, qps, seconds)]
    for ok, line in verdicts:
        print(f"{'ok  ' if ok else 'FAIL'} {line}")
    print(f"load average after {report['load_after']}")
    passed = all(ok for ok, _ in verdicts)
    report["verdicts"] = [{"ok": ok, "line": line} for ok, line in verdicts]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    print(f"soak {'PASSED' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
