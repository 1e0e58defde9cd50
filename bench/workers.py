"""How `dnsd serve --workers N` scales: for N = 1 up to the core count, geotm with N workers pinned to
cores 0..N-1 (N = 1: one process, no supervisor), dnsperf pinned to the last core, the example
config's query mix at full speed. Reports qps, qps per worker, the server's CPU busy (cores, all its
processes), qps per busy core, each worker's busy share, and dnsperf's own CPU busy, and what
limited the row: the load generator (dnsperf shares a core with a worker, N = cores, or is near a
whole core), the server (each worker near a whole core), or other loads (neither was: a shared
machine's other processes had the cores). See bench/README.md (Workers scaling).

    bench/workers.py [--seconds 10] [--runs 3] [--max-workers N] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # bench's modules, and dnsd when it is not installed

import benchlib as bl  # noqa: E402
import dnsperfout  # noqa: E402
import peers  # noqa: E402
from measure import WARMUP_S, dnsperf_argv, process_cpu_times, run_dnsperf  # noqa: E402
from verify import verify  # noqa: E402

from dnsd.common.children import ChildFailed, stop_all  # noqa: E402

BUSY = 0.9  # CPU (cores) from which dnsperf, or each worker, is taken as the limit


def process_cpu_seconds(pgid: int) -> dict[int, float]:
    """user + system CPU seconds of each live process in process group `pgid`, by PID."""
    return {pid: user + system for pid, (user, system) in process_cpu_times(pgid).items()}


def udp_sockets_on(port: int, table: str = "/proc/net/udp") -> int:
    """How many UDP sockets are bound to `port` (each SO_REUSEPORT worker has its own)."""
    try:
        lines = Path(table).read_text().splitlines()[1:]
    except OSError:
        return 0
    return sum(1 for line in lines if int(line.split()[1].rsplit(":", 1)[1], 16) == port)


def children_cpu_seconds() -> float:
    """CPU seconds of this process's reaped children (dnsperf, once each run is waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def core_list(cores: list[int]) -> str:
    return ",".join(str(core) for core in cores)


def measure_workers(count: int, load_core: int, m: bl.ZoneModel, config: Path, tmp: Path, qfile: Path,
                    seconds: float, runs: int) -> dict:
    """One row: geotm with `count` workers on cores 0..count-1, `runs` dnsperf runs (median)."""
    server_cores = list(range(count))
    server = peers.Server(f"geotm-w{count}", f"geotm dnsd --workers {count}", "eastus", "dnsd", is_geotm=True)
    peers.prepare(server, m, tmp, config)
    assert server.argv[:2] == ["taskset", "-c"]
    server.argv[2] = core_list(server_cores)
    if count > 1:
        server.argv += ["--workers", str(count)]
    row: dict = {"workers": count, "server_cores": server_cores, "load_core": load_core, "argv": server.argv,
                 "load_shares_a_server_core": load_core in server_cores, "runs": []}
    bl.log(f"workers={count}: starting on cores {core_list(server_cores)}, dnsperf on core {load_core}")
    child = peers.start(server, tmp / f"{server.name}.log", tmp / server.name)
    try:
        peers.wait_answering(server, m)
        deadline = time.monotonic() + peers.START_TIMEOUT
        while udp_sockets_on(server.port) < count and time.monotonic() < deadline:
            time.sleep(0.2)  # every worker listening before the load starts
        row["listening_sockets"] = udp_sockets_on(server.port)
        good, notes = verify(m, server.port, server.fixed, server.is_geotm)
        if not good:
            row["error"] = "wrong answers: " + "; ".join(notes)
            return row
        for index in range(runs):
            warm = dnsperf_argv(server.port, qfile, WARMUP_S, [])
            warm[2] = str(load_core)  # measure.py pins dnsperf to core 1: here the last core
            run_dnsperf(warm, WARMUP_S + 30)
            argv = dnsperf_argv(server.port, qfile, seconds, [])
            argv[2] = str(load_core)
            cpu0, load0, t0 = process_cpu_seconds(child.pid), children_cpu_seconds(), time.monotonic()
            code, out = run_dnsperf(argv, seconds + 60)
            cpu1, load1, t1 = process_cpu_seconds(child.pid), children_cpu_seconds(), time.monotonic()
            try:
                parsed = dnsperfout.parse_dnsperf(out)
            except ValueError:
                parsed = {"error": f"dnsperf exit {code}", "output": out[-2000:]}
            wall = t1 - t0
            busy = {pid: (cpu1[pid] - cpu0.get(pid, 0.0)) / wall for pid in cpu1}
            parsed["server_cpu_cores"] = sum(busy.values())
            # the supervisor barely runs: the busiest `count` processes are the workers
            parsed["worker_cpu_cores"] = sorted(busy.values(), reverse=True)[:count]
            parsed["load_cpu_cores"] = (load1 - load0) / wall
            row["runs"].append(parsed)
            bl.log(f"workers={count} run {index + 1}/{runs}: {parsed.get('qps', 'FAILED')} qps, server "
                   f"{parsed['server_cpu_cores']:.2f} cores, dnsperf {parsed['load_cpu_cores']:.2f}")
        if child.poll() is not None:
            row["error"] = f"exited during the run (status {child.returncode})"
    except ChildFailed as failure:
        row["error"] = f"did not start (exit {failure.returncode})"
        row["log"] = child.log_text()[-2000:]
    finally:
        child.stop()
    return row


def summarize(row: dict) -> dict:
    """The row's figures from its median-qps run."""
    good = [run for run in row["runs"] if "qps" in run]
    if not good:
        return {"workers": row["workers"], "error": row.get("error", "no run")}
    run = sorted(good, key=lambda r: r["qps"])[len(good) // 2]
    busy = run["server_cpu_cores"]
    if row["load_shares_a_server_core"] or run["load_cpu_cores"] >= BUSY:
        limit = "load generator"
    elif busy / row["workers"] >= BUSY:
        limit = "server"
    else:  # neither had its cores: other processes on a shared machine did
        limit = "other loads"
    return {"workers": row["workers"], "qps": run["qps"], "qps_per_worker": run["qps"] / row["workers"],
            "server_busy": busy, "qps_per_busy_core": run["qps"] / busy if busy else None,
            "worker_busy": run["worker_cpu_cores"], "load_busy": run["load_cpu_cores"],
            "lost": run.get("queries_lost", 0), "limit": limit,
            "server_cores": row["server_cores"], "load_core": row["load_core"]}


def format_rows(rows: list[dict]) -> str:
    """The scaling table (markdown)."""
    lines = ["| workers | server cores | dnsperf core | qps | qps per worker | server CPU busy (cores) | "
             "qps per busy core | each worker busy | dnsperf busy | lost | limit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['workers']} | {row['error']} |" + " |" * 9)
            continue
        per_core = f"{row['qps_per_busy_core'] / 1000:.0f}k" if row["qps_per_busy_core"] else "-"
        workers = "/".join(f"{busy:.2f}" for busy in row["worker_busy"])
        lines.append(f"| {row['workers']} | {core_list(row['server_cores'])} | {row['load_core']} | "
                     f"{row['qps'] / 1000:.0f}k | {row['qps_per_worker'] / 1000:.0f}k | {row['server_busy']:.2f} | "
                     f"{per_core} | {workers} | {row['load_busy']:.2f} | {row['lost']} | {row['limit']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/workers.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = os.cpu_count() or 1
    ap.add_argument("--seconds", type=float, default=10, help="measured seconds per dnsperf run (default 10)")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per worker count; the median shows (default 3)")
    ap.add_argument("--max-workers", type=int, default=cores, help=f"largest N (default: the core count, {cores})")
    ap.add_argument("--config", default=str(ROOT / "config" / "example.yaml"), help="geotm config to serve")
    ap.add_argument("--json", default=str(HERE / "results" / "workers.json"), help="raw results file")
    args = ap.parse_args(argv)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    for tool in ("dnsperf", "dig", "taskset"):
        if not peers.have(tool):
            bl.log(f"{tool} is missing")
            return 2
    if cores < 2:
        bl.log("needs 2 cores (a worker and dnsperf)")
        return 2
    load_core = cores - 1  # with N = cores workers, dnsperf shares this core with the last worker
    m = bl.load_model(args.config)
    tmp = Path(tempfile.mkdtemp(prefix="geotm-bench-workers-"))
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cores": cores, "seconds": args.seconds,
                     "runs": args.runs, "loadavg_before": os.getloadavg(), "rows": []}
    try:
        qfile = tmp / "queries.txt"
        qfile.write_text("\n".join(bl.query_lines(m)) + "\n")
        for count in range(1, min(args.max_workers, cores) + 1):
            results["rows"].append(measure_workers(count, load_core, m, Path(args.config), tmp, qfile,
                                                   args.seconds, args.runs))
    except KeyboardInterrupt:
        bl.log("interrupted: stopping everything")
        return 130
    finally:
        stop_all(grace=3.0)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = [summarize(row) for row in results["rows"]]
    results["summary"] = summary
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(format_rows(summary))
    print(f"\n{cores} cores; dnsperf on core {load_core}; raw results: {args.json}")
    return 1 if any("error" in row for row in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
