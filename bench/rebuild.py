"""Rebuild cost: how long config load, table compile and a health swap take for registries (3-6
replicas each) x client networks, and whether queries keep flowing while a real dnsd reloads and while
replicas are drained and forced down through its admin API.

    .venv/bin/python bench/rebuild.py            # table of timings (health swap: medians of 3)
    .venv/bin/python bench/rebuild.py --live     # also: reload, drain and force down in a running dnsd under load
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import MappingProxyType

import dns.edns
import dns.message
import structlog
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dnsd import names  # noqa: E402
from dnsd.common.children import Child, free_port  # noqa: E402
from dnsd.config import parse_config_text, read_document  # noqa: E402
from dnsd.model import ClientNetwork  # noqa: E402
from dnsd.routing.health import EndpointHealth, HealthSnapshot, Status  # noqa: E402
from dnsd.serving.runtime import build_plans  # noqa: E402
from dnsd.serving.service import Dnsd  # noqa: E402

EXAMPLE = ROOT / "config" / "example.yaml"
REGIONS = ["eastus", "westus", "westeurope", "northeurope", "southeastasia", "japaneast"]


NETWORK_BASE = 0x14000000  # 20.0.0.0: client network i is the /24 at NETWORK_BASE + 256 i


def network_cidr(index: int) -> str:
    address = NETWORK_BASE + 256 * index
    return f"{address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}.0/24"


def network_region(index: int) -> str:
    return REGIONS[(index * 7919) % len(REGIONS)]  # spread over the regions, the same on every run


def client_networks(count: int) -> tuple[ClientNetwork, ...]:
    """`count` client networks (/24s) spread over the regions, built without YAML (timing table)."""
    import ipaddress  # start-up: only the timing table builds networks directly
    return tuple(ClientNetwork(ipaddress.ip_network(network_cidr(i)), network_region(i)) for i in range(count))


def config_text(registries: int, seed: int = 7, networks: int = 0, admin: tuple[int, str] | None = None) -> str:
    """A config with `registries` registries of 3-6 replicas each, a VNet view holding a tenth of them,
    `networks` client networks (else the example's), and the admin API on (port, token file) if given."""
    rng = random.Random(seed)
    data = read_document(EXAMPLE)
    data["regions"] = REGIONS
    data["latency_ms"] = {a: {b: 20 + 30 * abs(i - j) for j, b in enumerate(REGIONS) if j > i}
                          for i, a in enumerate(REGIONS) if i < len(REGIONS) - 1}
    data["health"] = {}
    data["admin"] = {"listen": "off"} if admin is None else {"listen": f"127.0.0.1:{admin[0]}", "token_file": admin[1]}
    if networks:
        data["clients"]["networks"] = {network_cidr(i): network_region(i) for i in range(networks)}
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


def parse_grid(text: str) -> list[tuple[int, int]]:
    """"1x10000,1000x100000" -> [(registries, networks), ...]"""
    return [(int(a), int(b)) for a, b in (cell.lower().split("x") for cell in text.split(","))]


def measure(grid: list[tuple[int, int]], runs: int) -> list[dict]:
    """Per (registries, networks): YAML load (registries only), compile (a Dnsd started: 1 run, it is per
    reload, off the loop), and a probe verdict about one replica (Dnsd.apply_health: health known for
    every replica, one of them flips; what the event loop spends) and every plan rebuilt (build_plans):
    medians of `runs`. The client networks are put into the parsed config directly (100k of them in
    YAML would time the parser, not the rebuild)."""
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # routing events: built, not printed
    rows, configs = [], {}
    for count, networks in grid:
        if count not in configs:
            text = config_text(count)
            configs[count] = timed(lambda: parse_config_text(text, f"{count}.yaml"), runs)
        load_s, parsed = configs[count]
        config = dataclasses.replace(parsed, topology=dataclasses.replace(parsed.topology,
                                                                          client_networks=client_networks(networks)))
        compile_s, server = timed(lambda: Dnsd(config), 1)
        online = HealthSnapshot(1, MappingProxyType({(reg.name, rep.name): EndpointHealth(Status.ONLINE, "HTTP 200")
                                                     for reg in config.registries for rep in reg.replicas}))
        server.apply_health(online)
        first = config.registries[0]
        degraded = online.with_status(first.name, first.replicas[0].name, EndpointHealth(Status.DEGRADED, "bench"))
        verdicts = itertools.cycle((degraded, online))  # every run a real change, alternately
        swap_s, _ = timed(lambda: server.apply_health(next(verdicts)), runs)
        all_plans_s, _ = timed(lambda: build_plans(config, degraded, server.snapshot.overrides), runs)
        entries = sum(len(table) for table in server.snapshot.compiled.exact)
        rows.append({"registries": count, "networks": networks, "replicas": sum(len(r.replicas) for r in config.registries),
                     "answers": entries, "load_s": load_s, "compile_s": compile_s, "health_swap_s": swap_s,
                     "all_plans_s": all_plans_s})
    return rows


class LiveDnsd:
    """A real `dnsd serve` on a loopback port, its log in a file (never a pipe: a pipe nobody reads fills
    up with the start-up events of a big config and blocks the server), stopped by its PID."""

    def __init__(self, config: Path, workdir: Path, extra: tuple[str, ...] = (), zone: str | None = None):
        self.port = free_port()
        self.zone = zone or read_document(EXAMPLE)["zone"]["name"]  # the configs here keep the example's zone
        self.log_path = workdir / "dnsd.log"
        self.log_offset = 0  # where wait_for_event goes on reading
        self.process = Child([sys.executable, "-m", "dnsd", "serve", "--config", str(config), "--listen",
                              f"127.0.0.1:{self.port}", "--log-format", "json", *extra],
                             self.log_path, name="dnsd", cwd=ROOT).start()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until it answers (big configs take a while to compile); ChildFailed (a RuntimeError with the
        log tail) when it exits first or `timeout` passes."""
        wire = dns.message.make_query(self.zone, "SOA").to_wire()

        def answers() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.2)
                sock.sendto(wire, ("127.0.0.1", self.port))
                sock.recv(4096)
                return True
        self.process.wait_ready(answers, timeout)

    def log(self) -> str:
        return self.process.log_text()

    def wait_for_event(self, names: tuple[str, ...], timeout: float) -> str:
        """Wait for the next of these log events after the last one waited for; read only new lines (the
        client shares its process with the load thread, so it must stay cheap). Returns the name seen."""
        deadline = time.monotonic() + timeout
        wanted = [(name, f'"event": "{name}"'.encode()) for name in names]
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            while time.monotonic() < deadline and self.process.running():
                line = log.readline()
                if not line.endswith(b"\n"):  # nothing new, or a line still being written
                    log.seek(self.log_offset)
                    time.sleep(0.05)
                    continue
                self.log_offset = log.tell()
                for name, pattern in wanted:
                    if pattern in line:
                        return name
        raise RuntimeError(f"none of {names} within {timeout:g} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        self.process.stop(grace=15)


def query_wires(registries: int, zone: str, count: int = 512, networks: int = 0) -> list[bytes]:
    """Distinct questions (global, traffic-manager and regional names, A/AAAA, a missing name) so the
    packet cache, emptied by every swap, does not answer them all; with `networks`, each with an ECS
    subnet in one of the config's client networks, so routing looks the client up among them."""
    rng = random.Random(11)
    wires = []
    for index in range(count):
        reg = f"reg{rng.randrange(registries):04d}"
        name = rng.choice([names.global_name(reg, zone), names.traffic_manager_name(reg, zone),
                           f"nope{index}.{zone}", names.regional_name(reg, rng.choice(REGIONS), zone)])
        options = [dns.edns.ECSOption(network_cidr(rng.randrange(networks)).split("/")[0], 24)] if networks else []
        wires.append(dns.message.make_query(name, rng.choice(["A", "A", "AAAA"]), use_edns=0 if options else None,
                                            options=options or None).to_wire())
    return wires


class PacedLoad:
    """Open-loop UDP load: one query every 1/rate s whether or not the last was answered (so a stalled
    server shows as many late answers, not as one); latency per query by DNS ID. One thread, no GIL
    contention inside the client."""

    def __init__(self, port: int, wires: list[bytes], rate: float, timeout: float = 2.0):
        self.port, self.wires, self.rate, self.timeout = port, wires, rate, timeout
        self.sent: dict[int, float] = {}  # id -> send time
        self.latency: dict[int, float] = {}  # id -> seconds
        self.seq = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.records: list[tuple[float, float | None]] = []  # (send time, latency or None = lost)

    def start(self) -> PacedLoad:
        self.thread.start()
        return self

    def finish(self) -> list[tuple[float, float | None]]:
        self.stop.set()
        self.thread.join(timeout=30)
        return self.records

    def _run(self) -> None:
        import select
        pending: dict[int, float] = {}
        period = 1.0 / self.rate
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
                try:  # room for replies while this client is not scheduled: a lost reply is the server's fault only
                    sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
                    break
                except (OSError, TypeError):
                    continue
            sock.connect(("127.0.0.1", self.port))
            next_send = time.perf_counter()
            qid = 0
            draining_until = None
            while True:
                now = time.perf_counter()
                if self.stop.is_set() and draining_until is None:
                    draining_until = now + self.timeout
                if draining_until is None and now >= next_send:
                    qid = (qid + 1) & 0xFFFF
                    wire = self.wires[qid % len(self.wires)]
                    if qid in pending:  # 65536 queries outstanding: that one is lost
                        self.records.append((pending.pop(qid), None))
                    try:
                        sock.send(qid.to_bytes(2, "big") + wire[2:])
                        pending[qid] = now
                    except BlockingIOError:
                        self.records.append((now, None))
                    next_send += period
                    if next_send < now - 1.0:  # the client itself fell behind by a second: skip ahead
                        next_send = now
                    continue
                if draining_until is not None and (not pending or now >= draining_until):
                    break
                wait = max(0.0, min(next_send - now, 0.05)) if draining_until is None else 0.05
                ready, _, _ = select.select([sock], [], [], wait)
                while ready:
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:
                        break
                    got = time.perf_counter()
                    started = pending.pop(int.from_bytes(data[:2], "big"), None)
                    if started is not None:
                        self.records.append((started, got - started))
                # expire the ones older than the timeout
                now = time.perf_counter()
                for old_id in [i for i, t in pending.items() if now - t > self.timeout]:
                    self.records.append((pending.pop(old_id), None))
            for started in pending.values():
                self.records.append((started, None))


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summarize(records: list[tuple[float, float | None]], windows: list[tuple[float, float]] | None) -> dict:
    """Latency of the queries sent inside `windows` (None: all of them)."""
    chosen = [lat for sent, lat in records
              if windows is None or any(a <= sent <= b for a, b in windows)]
    answered = [lat for lat in chosen if lat is not None]
    return {"queries": len(chosen), "answered": len(answered), "lost": len(chosen) - len(answered),
            "p50_ms": percentile(answered, 0.50) * 1000, "p99_ms": percentile(answered, 0.99) * 1000,
            "max_ms": max(answered, default=float("nan")) * 1000}


def live_reload(count: int, reloads: int = 2, rate: float = 1000.0, baseline_s: float = 3.0,
                reload_timeout: float = 180.0) -> dict:
    """Reload a running dnsd (SIGHUP, `count` registries) `reloads` times under a paced query stream;
    latency of the queries sent while a reload was running (SIGHUP to its config_reloaded event) and
    of a quiet baseline before."""
    workdir = Path(tempfile.mkdtemp(prefix="geotm-rebuild-"))
    path = workdir / "big.yaml"
    path.write_text(config_text(count))
    server = LiveDnsd(path, workdir, ("--admin-listen", "off"))
    windows: list[tuple[float, float]] = []
    try:
        server.wait_ready()
        load = PacedLoad(server.port, query_wires(count, server.zone), rate).start()
        time.sleep(baseline_s)
        quiet_end = time.perf_counter()
        for attempt in range(reloads):
            path.write_text(config_text(count, seed=100 + attempt))  # a real change each time
            started = time.perf_counter()
            server.process.send_signal(signal.SIGHUP)
            server.wait_for_event(("config_reloaded", "config_reload_failed"), reload_timeout)
            windows.append((started, time.perf_counter()))
            time.sleep(0.5)
        records = load.finish()
    finally:
        server.stop()
    log = server.log()
    shutil.rmtree(workdir, ignore_errors=True)
    return {"registries": count, "rate": rate, "reloads": log.count('"event": "config_reloaded"'),
            "failed": log.count('"event": "config_reload_failed"'),
            "reload_s": [round(b - a, 2) for a, b in windows],
            "quiet": summarize(records, [(0.0, quiet_end)]), "during": summarize(records, windows),
            "all": summarize(records, None)}


class AdminApi:
    """The admin API of a LiveDnsd: set and remove overrides, each call timed (the change is applied
    before the reply, so the time is how long it took to take effect)."""

    def __init__(self, port: int, token: str):
        self.base, self.token = f"http://127.0.0.1:{port}", token

    def call(self, method: str, path: str, body: dict | None = None) -> float:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as reply:
            reply.read()
        return time.perf_counter() - started


def live_changes(count: int, networks: int, changes: int = 6, rate: float = 1000.0, baseline_s: float = 2.0) -> dict:
    """Drain and force down (a health verdict's path: new routing plans) replicas of a running dnsd with
    `count` registries and `networks` client networks, `changes` times, each undone after 0.3 s, under a
    paced query stream; latency of the queries sent while a change was being applied."""
    workdir = Path(tempfile.mkdtemp(prefix="geotm-changes-"))
    token_path = workdir / "admin.token"
    token_path.write_text("bench-token-" + "x" * 32 + "\n")
    admin_port = free_port()
    path = workdir / "big.yaml"
    path.write_text(config_text(count, networks=networks, admin=(admin_port, str(token_path))))
    registries = parse_config_text(config_text(count), "registries.yaml").registries  # the same registries
    rng = random.Random(5)
    server = LiveDnsd(path, workdir)
    api = AdminApi(admin_port, token_path.read_text().strip())
    windows: list[tuple[float, float]] = []
    applied: list[float] = []
    try:
        server.wait_ready(timeout=300)
        load = PacedLoad(server.port, query_wires(count, server.zone, networks=networks), rate).start()
        time.sleep(baseline_s)
        quiet_end = time.perf_counter()
        for attempt in range(changes):
            registry = rng.choice(registries)
            replica = rng.choice(registry.replicas).name
            kind = "drain" if attempt % 2 == 0 else "force_down"
            for method, where, body in (("POST", "/v1/overrides", {"registry": registry.name, "replica": replica,
                                                                  "kind": kind, "reason": "bench", "force": True}),
                                        ("DELETE", f"/v1/overrides/{registry.name}/{replica}", None)):
                started = time.perf_counter()
                applied.append(api.call(method, where, body))
                windows.append((started, time.perf_counter()))
                time.sleep(0.3)
        records = load.finish()
    finally:
        server.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return {"registries": count, "networks": networks, "rate": rate, "changes": len(applied),
            "apply_ms": [round(s * 1000, 1) for s in applied],
            "quiet": summarize(records, [(0.0, quiet_end)]), "during": summarize(records, windows),
            "all": summarize(records, None)}


def print_latency_rows(result: dict, labels: tuple[str, ...]) -> None:
    print(f"{'':>16} {'queries':>8} {'lost':>5} {'p50':>8} {'p99':>8} {'max':>8}")
    for label, title in labels:
        row = result[label]
        print(f"{title:>16} {row['queries']:>8} {row['lost']:>5} "
              f"{row['p50_ms']:>6.2f}ms {row['p99_ms']:>6.2f}ms {row['max_ms']:>6.1f}ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="1x10000,100x10000,10x100000,100x100000,1000x100000",
                        help="registries x client networks of the timing table")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--live", action="store_true")
    parser.add_argument("--counts", default="1000", help="registries of the --live reload (the last one counts)")
    parser.add_argument("--reloads", type=int, default=2, help="reloads under load (--live)")
    parser.add_argument("--live-grid", default="10x100000,100x100000",
                        help="registries x client networks of the --live drains and forced-down replicas")
    parser.add_argument("--changes", type=int, default=6, help="drains/force-downs (each undone) per --live-grid cell")
    parser.add_argument("--rate", type=float, default=1000.0, help="queries per second during --live")
    parser.add_argument("--p99-target-ms", type=float, default=5.0, help="--live reload fails above this")
    parser.add_argument("--live-only", action="store_true", help="skip the timing table")
    args = parser.parse_args()
    rows = [] if args.live_only else measure(parse_grid(args.grid), args.runs)
    if rows:
        print(f"{'registries':>10} {'networks':>8} {'replicas':>8} {'answers':>8} {'load':>9} {'compile':>9} "
              f"{'health swap':>12} {'all plans':>10}")
    for row in rows:
        print(f"{row['registries']:>10} {row['networks']:>8} {row['replicas']:>8} {row['answers']:>8} "
              f"{row['load_s']*1000:>7.0f}ms {row['compile_s']*1000:>7.0f}ms {row['health_swap_s']*1000:>10.2f}ms "
              f"{row['all_plans_s']*1000:>8.2f}ms")
    if rows:
        print("load = YAML + validation (registries); compile = a dnsd started: every answer pre-packed, networks "
              "matched (1 run); health swap = Dnsd.apply_health for one replica's verdict (new plans for the registries "
              "it changes, the swap, its routing event: what a probe verdict costs the event loop); all plans = every registry's plan rebuilt (a verdict about every replica). A config reload costs load + compile, "
              "off the event loop.")
    if not args.live:
        return 0
    ok = True
    if args.changes > 0:
        for count, networks in parse_grid(args.live_grid):
            result = live_changes(count, networks, args.changes, args.rate)
            print(f"live: {result['changes']} changes (drain / force down, and undo) in a {count}-registry, "
                  f"{networks}-network dnsd under {result['rate']:g} queries/s (paced, open loop); each applied in "
                  f"{', '.join(f'{ms:g}' for ms in result['apply_ms'])} ms:")
            print_latency_rows(result, (("quiet", "quiet"), ("during", "during change"), ("all", "whole run")))
            ok = ok and not result["all"]["lost"]
    if args.reloads > 0:
        result = live_reload(int(args.counts.split(",")[-1]), args.reloads, args.rate)
        print(f"live: {result['reloads']} reloads ({result['failed']} failed) of a {result['registries']}-registry "
              f"config, taking {', '.join(f'{s:.1f}' for s in result['reload_s'])} s, under {result['rate']:g} "
              "queries/s (paced, open loop):")
        print_latency_rows(result, (("quiet", "quiet"), ("during", "during reload")))
        during = result["during"]
        met = result["reloads"] == args.reloads and not during["lost"] and during["p99_ms"] < args.p99_target_ms
        print(f"target: p99 during reload under {args.p99_target_ms:g} ms, nothing lost: {'met' if met else 'MISSED'}")
        ok = ok and met
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
