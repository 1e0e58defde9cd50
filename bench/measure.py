"""Load on a server: dnsperf runs pinned to the load core (the main mix and its ECS and VNet-source
variants at full speed, then a fixed rate for per-query latency), plus the many-source row from our
own load generator (manysrc.py), with the server's and the load generator's CPU use over each run."""
from __future__ import annotations

import os
import resource
import shlex
import subprocess
import time
from pathlib import Path

import benchlib as bl
import dnsperfout
from peers import Server

from dnsd.common.children import Child

LOAD_CORE = "1"
WARMUP_S = 2
CLIENTS = 4
OUTSTANDING = 200


def group_cpu_seconds(pgid: int) -> float:
    """user + system CPU seconds of every live process in process group `pgid` (a server we
    started in its own session, and any workers it forked)."""
    return sum(group_cpu_times(pgid))


def group_cpu_times(pgid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every live process in process group `pgid`."""
    per_process = process_cpu_times(pgid).values()
    return sum(user for user, _ in per_process), sum(system for _, system in per_process)


def process_cpu_times(pgid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of each live process in process group `pgid`, by PID."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        if int(fields[2]) == pgid:
            found[int(d.name)] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return found


def measured_run(server, argv: list[str], timeout: float, tool: str) -> dict:
    """One measured load-generator run against a started server: its parsed output (dnsperf's
    format), the argv, and the CPU figures of the server and the load generator over it."""
    cpu0, load0, t0 = group_cpu_seconds(server.child.pid), load_cpu_seconds(), time.monotonic()
    rc, out = run_dnsperf(argv, timeout)
    cpu1, load1, t1 = group_cpu_seconds(server.child.pid), load_cpu_seconds(), time.monotonic()
    try:
        parsed = dnsperfout.parse_dnsperf(out)
    except ValueError:
        parsed = {"error": f"{tool} exit {rc}", "output": out[-2000:]}
    parsed["argv"] = argv
    parsed.update(cpu_figures(cpu1 - cpu0, load1 - load0, t1 - t0, parsed.get("queries_completed"),
                              parsed.get("run_time_s")))
    return parsed


def load_cpu_seconds() -> float:
    """user + system CPU seconds of this process's finished children: read before and after a load
    generator run, the difference is that run's own CPU (it is the only child reaped in between)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_figures(server_s: float, load_s: float, wall_s: float, answered: int | None,
                run_s: float | None = None) -> dict:
    """A run's CPU figures: cores busy (server, load generator), server CPU per answered query (us)
    and answered queries per busy server core. `run_s`: the load generator's own run time, when it
    reports one: the server's busy share is over that (dnsperf then waits up to its 5 s timeout for
    lost queries, when the server is idle); the load generator's over the whole wall time (dnsperf
    keeps spinning while it waits)."""
    server_over = run_s if run_s else wall_s
    return {"server_cpu_s": server_s, "load_cpu_s": load_s,
            # the server's CPU use during the run (all its processes): near 1.0 core it was the limit
            "server_cpu_cores": server_s / server_over if server_over > 0 else None,
            # the load generator's (pinned to one core): near 1.0 core it was the limit
            "load_cpu_cores": load_s / wall_s if wall_s > 0 else None,
            "cpu_us_per_query": server_s / answered * 1e6 if answered and server_s > 0 else None,
            "qps_per_core": answered / server_s if answered and server_s > 0 else None}


def dnsperf_argv(port: int, qfile: Path, seconds: float, extra: list[str]) -> list[str]:
    return ["taskset", "-c", LOAD_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
            "-l", f"{seconds:g}", "-c", str(CLIENTS), "-q", str(OUTSTANDING), *extra]


def run_dnsperf(argv: list[str], timeout: float, outfile: Path | None = None) -> tuple[int, str]:
    """Run dnsperf to completion (stopped after `timeout`): its exit status and output. The output
    goes to a file (`outfile` when given, else a temporary one): a file costs dnsperf less than a
    pipe someone must keep draining, which matters for the -v run."""
    child = Child(argv, outfile, name="dnsperf").start()
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    code = child.stop()
    return code if code is not None else -1, child.log_text()


VARIANTS = {
    "main": [],
    "ecs": ["-E", f"8:{bl.ecs_option_hex(bl.ECS_SUBNET)}"],
    "vnet": ["-a", bl.VNET_SOURCE],
}
# row kinds in table order; "src1k" is manysrc.py's (not dnsperf's)
VARIANT_LABEL = {"main": "", "ecs": " +ecs", "vnet": " vnet-src", "src1k": " 1k-src"}


def measure(s: Server, qfile: Path, seconds: float, runs: int, variant_runs: int, result: dict,
            commands: list[str]) -> None:
    for variant, extra in VARIANTS.items():
        n = runs if variant == "main" else variant_runs
        if n <= 0:
            continue
        vres = result["variants"].setdefault(variant, {"runs": []})
        for i in range(n):
            warm = dnsperf_argv(s.port, qfile, WARMUP_S, extra)
            run_dnsperf(warm, WARMUP_S + 30)
            argv = dnsperf_argv(s.port, qfile, seconds, extra)
            if i == 0:
                commands.append(shlex.join(warm) + "    # warm-up before every measured run, discarded")
                commands.append(shlex.join(argv))
            parsed = measured_run(s, argv, seconds + 60, "dnsperf")
            vres["runs"].append(parsed)
            bl.log(f"{s.name} {variant} run {i + 1}/{n}: {parsed.get('qps', 'FAILED')} qps, "
                f"lost {parsed.get('queries_lost', '-')}")


def measure_latency(s: Server, qfile: Path, seconds: float, runs: int, rate: int, result: dict,
                    commands: list[str], tmp: Path) -> None:
    """`runs` runs at the fixed `rate`, each after a warm-up; the row shows the median of the runs'
    mean and p99 (one run is easily spoiled by a neighbour on a shared machine)."""
    # -T 1: one send/receive thread pair. With -v and several threads on one core, dnsperf's own
    # printing adds milliseconds to the p99 (measured against Knot at 60k qps: p99 3.9 ms with the
    # default threads, 0.14 ms with -T 1; mean 0.027 ms against 0.036 ms without -v).
    extra = ["-T", "1", "-Q", str(rate)]
    out_runs = []
    for i in range(max(1, runs)):
        warm = dnsperf_argv(s.port, qfile, WARMUP_S, extra)
        run_dnsperf(warm, WARMUP_S + 30)
        argv = dnsperf_argv(s.port, qfile, seconds, [*extra, "-v"])
        outfile = tmp / f"{s.name}-latency.txt"
        if i == 0:
            commands.append(shlex.join(warm) + "    # warm-up before every latency run, discarded")
            commands.append(shlex.join(argv) + f" > {outfile.name}    # fixed load, per-query latencies from -v")
        cpu0, load0, t0 = group_cpu_seconds(s.child.pid), load_cpu_seconds(), time.monotonic()
        rc, out = run_dnsperf(argv, seconds + 60, outfile)
        cpu1, load1, t1 = group_cpu_seconds(s.child.pid), load_cpu_seconds(), time.monotonic()
        outfile.unlink(missing_ok=True)
        lat, codes = dnsperfout.parse_verbose_latencies(out)
        try:
            summary = dnsperfout.parse_dnsperf(out)
        except ValueError:
            summary = {"error": f"dnsperf exit {rc}"}
        run = {
            "argv": argv, "summary": summary, "answers": len(lat), "rcodes_seen": codes,
            "mean_ms": (sum(lat) / len(lat) * 1000) if lat else None,
            "p50_ms": dnsperfout.percentile(lat, 50) * 1000 if lat else None,
            "p99_ms": dnsperfout.percentile(lat, 99) * 1000 if lat else None,
            "p999_ms": dnsperfout.percentile(lat, 99.9) * 1000 if lat else None,
        }
        # the server's CPU at this rate: at a rate every server sustains, CPU per query compares like
        # with like (at saturation a faster server also saves the kernel's wake-ups)
        run.update(cpu_figures(cpu1 - cpu0, load1 - load0, t1 - t0, len(lat), summary.get("run_time_s")))
        run["saturated"] = bool(summary.get("qps") and summary["qps"] < 0.95 * rate)
        out_runs.append(run)
        bl.log(f"{s.name} latency run {i + 1} at {rate} qps: mean {_ms(run['mean_ms'])} ms, p99 {_ms(run['p99_ms'])} ms")
    good = [r for r in out_runs if r["p99_ms"] is not None]
    result["latency"] = {
        "rate": rate, "runs": out_runs,
        "mean_ms": dnsperfout.median([r["mean_ms"] for r in good]) if good else None,
        "p99_ms": dnsperfout.median([r["p99_ms"] for r in good]) if good else None,
        "p999_ms": dnsperfout.median([r["p999_ms"] for r in good]) if good else None,
        "cpu_us_per_query": dnsperfout.median([r["cpu_us_per_query"] for r in good if r["cpu_us_per_query"]])
        if good else None,
        "saturated": any(r["saturated"] for r in out_runs),
    }


def _ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"
