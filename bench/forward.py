"""Forwarding benchmark (issue 10): cache-hit qps, server CPU per query and latency at a fixed rate of
geotm's forwarding side by side with unbound and dnsmasq (both from Debian), every one forwarding the
same outside names to the same upstream (Knot on loopback). See bench/README.md, "Forwarding".

    .venv/bin/python bench/forward.py [--seconds 15] [--runs 3] [--rate 20000] [--only geotm,unbound]

This module is the run: its arguments, the upstream, each forwarder in turn (start, warm its cache,
check its answers, measure, stop), the report and the results file. forwardlib.py holds the pure
parts; peers.py (install, start), measure.py (dnsperf, CPU) and dnsd.common.children are bench/run's."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # bench's modules, and dnsd when it is not installed

import benchlib as bl  # noqa: E402
import dnsperfout  # noqa: E402
import forwardlib as fl  # noqa: E402
import peerconfig  # noqa: E402
import peers  # noqa: E402
from measure import (  # noqa: E402
    CLIENTS,
    LOAD_CORE,
    OUTSTANDING,
    WARMUP_S,
    dnsperf_argv,
    group_cpu_seconds,
    group_cpu_times,
    measure_latency,
    run_dnsperf,
)
from verify import dig  # noqa: E402

from dnsd.common.children import ChildFailed, free_port, stop_all  # noqa: E402

# Debian package -> the program it must provide (missing program: the package is installed)
PACKAGES = {"knot": "knotd", "unbound": "unbound", "dnsmasq-base": "dnsmasq", "dnsperf": "dnsperf",
            "dnsutils": "dig"}
DESCRIPTIONS = {
    "geotm": "geotm dnsd, forward section (clients loopback, upstream Knot), zone of config/example.yaml",
    "unbound": "unbound, 1 thread, forward-zone to Knot, cache on, no DNSSEC validation",
    "dnsmasq": "dnsmasq, server=/example.net/ to Knot, cache-size 10000, no-resolv",
}
UPSTREAM_CORE = "1"       # Knot works only while caches fill (before measuring), beside dnsperf
WARM_OUTSTANDING = 20     # the cache-filling pass: few misses at once, so no forwarder drops any


def program(name: str) -> str:
    """The binary of a server, from PATH or Debian's sbin."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


def start_upstream(tmp: Path, names: int) -> peers.Server:
    """Knot serving the outside names on its own port, pinned beside dnsperf."""
    s = peers.Server("knot-upstream", f"Knot DNS serving {fl.UPSTREAM_ZONE} ({names} names)", None, "knotd")
    d = tmp / s.name
    (d / "run").mkdir(parents=True)
    s.port = free_port()
    zone_file = d / f"{fl.UPSTREAM_ZONE}.zone"
    zone_file.write_text(fl.upstream_zone(names))
    (d / "knot.conf").write_text(peerconfig.knot_config(fl.UPSTREAM_ZONE, s.port, str(d), str(zone_file)))
    s.argv = ["taskset", "-c", UPSTREAM_CORE, program("knotd"), "-c", str(d / "knot.conf")]
    peers.start(s, d / "knotd.log", d)
    s.child.wait_ready(lambda: dig(s.port, fl.host_name(0), "A", ["+time=1", "+tries=1"]) is not None,
                       peers.START_TIMEOUT, interval=0.2)
    return s


def prepare(name: str, tmp: Path, config: Path, upstream_port: int) -> peers.Server:
    """The forwarder's config under tmp/<name>, its port and its command line (pinned to core 0)."""
    s = peers.Server(name, DESCRIPTIONS[name], None, "dnsd" if name == "geotm" else name, is_geotm=name == "geotm")
    d = tmp / name
    d.mkdir(parents=True)
    s.port = free_port()
    if name == "geotm":
        (d / "geotm.yaml").write_text(fl.geotm_config(config, d, s.port, upstream_port))
        argv = [peers.dnsd_program(), "serve", "--config", str(d / "geotm.yaml"), "--listen", f"127.0.0.1:{s.port}",
                "--admin-listen", "off", "--log-level", "warning"]
    elif name == "unbound":
        (d / "unbound.conf").write_text(fl.unbound_config(s.port, upstream_port, str(d)))
        argv = [program("unbound"), "-d", "-c", str(d / "unbound.conf")]
    else:
        (d / "dnsmasq.conf").write_text(fl.dnsmasq_config(s.port, upstream_port, str(d / "dnsmasq.pid")))
        argv = [program("dnsmasq"), "--keep-in-foreground", f"--conf-file={d / 'dnsmasq.conf'}"]
    s.argv = ["taskset", "-c", peers.SERVER_CORE, *argv]
    return s


def warm(s: peers.Server, qfile: Path, commands: list[str]) -> dict:
    """Fill the cache: one pass over the query file (misses go upstream, few at once), then a second
    pass that must be all NOERROR with nothing lost."""
    argv = ["taskset", "-c", LOAD_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(s.port), "-d", str(qfile),
            "-n", "1", "-c", "1", "-q", str(WARM_OUTSTANDING), "-t", "2"]
    commands.append(shlex.join(argv) + "    # twice: fills the cache, then checks every question answers")
    passes = []
    for _ in range(2):
        rc, out = run_dnsperf(argv, 120)
        try:
            passes.append(dnsperfout.parse_dnsperf(out))
        except ValueError:
            passes.append({"error": f"dnsperf exit {rc}", "output": out[-2000:]})
    return {"passes": passes}


def check_answers(s: peers.Server, questions: list[tuple[str, str]]) -> tuple[bool, dict, list[str]]:
    """dig (with RD) each sampled question: NOERROR, RA, the upstream's records. -> (all good,
    {question: sorted (owner, type, rdata)}, notes)."""
    answers, notes = {}, []
    good = True
    for name, qtype in questions:
        a = dig(s.port, name, qtype, ["+rec"])
        key = f"{name} {qtype}"
        if a is None:
            notes.append(f"{key}: no answer")
            good = False
            continue
        records = sorted((owner, rtype, rdata) for owner, _, rtype, rdata in a.answer)
        answers[key] = [list(r) for r in records]
        want = sorted((name.lower(), qtype, rdata) for rdata in fl.expected(name, qtype))
        problems = []
        if a.rcode != "NOERROR":
            problems.append(f"rcode {a.rcode}")
        if "ra" not in a.flags:
            problems.append("no RA")
        if records != want:
            problems.append(f"records {records}, want {want}")
        if problems:
            notes.append(f"{key}: " + ", ".join(problems))
            good = False
    notes.append(f"{len(questions)} sampled questions: {'all as the upstream serves them' if good else 'WRONG'}")
    return good, answers, notes


def measured_runs(s: peers.Server, upstream: peers.Server, qfile: Path, seconds: float, runs: int, res: dict,
                  commands: list[str]) -> None:
    """`runs` dnsperf runs at saturation, each after a warm-up, with the server's and the upstream's
    CPU (the upstream's is about 0 when every query is a cache hit)."""
    res["runs"] = []
    for i in range(runs):
        warm_argv = dnsperf_argv(s.port, qfile, WARMUP_S, [])
        run_dnsperf(warm_argv, WARMUP_S + 30)
        argv = dnsperf_argv(s.port, qfile, seconds, [])
        if i == 0:
            commands.append(shlex.join(warm_argv) + "    # warm-up before every measured run, discarded")
            commands.append(shlex.join(argv))
        (user0, sys0), up0, t0 = group_cpu_times(s.child.pid), group_cpu_seconds(upstream.child.pid), time.monotonic()
        rc, out = run_dnsperf(argv, seconds + 60)
        (user1, sys1), up1, t1 = group_cpu_times(s.child.pid), group_cpu_seconds(upstream.child.pid), time.monotonic()
        try:
            parsed = dnsperfout.parse_dnsperf(out)
        except ValueError:
            parsed = {"error": f"dnsperf exit {rc}", "output": out[-2000:]}
        parsed["argv"] = argv
        parsed["server_cpu_cores"] = (user1 + sys1 - user0 - sys0) / (t1 - t0) if t1 > t0 else None
        parsed["server_user_cores"] = (user1 - user0) / (t1 - t0) if t1 > t0 else None  # the server's own code
        parsed["upstream_cpu_cores"] = (up1 - up0) / (t1 - t0) if t1 > t0 else None
        parsed["loadavg_before"] = os.getloadavg()
        res["runs"].append(parsed)
        bl.log(f"{s.name} run {i + 1}/{runs}: {parsed.get('qps', 'FAILED')} qps, lost {parsed.get('queries_lost', '-')}, "
               f"server {parsed['server_cpu_cores']:.2f} cores")


def run_server(name: str, args, tmp: Path, qfile: Path, questions, upstream: peers.Server, results: dict,
               commands: list[str]) -> bool:
    """One forwarder from start to stop; False when it did not start or answered wrong (not measured)."""
    s = prepare(name, tmp, Path(args.config), upstream.port)
    res = results["servers"].setdefault(name, {"desc": s.desc, "argv": s.argv, "port": s.port})
    commands.append(f"# {name}: {s.desc}")
    commands.append(shlex.join(s.argv))
    bl.log(f"starting {name}: {shlex.join(s.argv)}")
    child = peers.start(s, tmp / f"{name}.log", tmp / name)
    res["pid"] = child.pid
    try:
        try:
            child.wait_ready(lambda: dig(s.port, fl.host_name(0), "A", ["+rec", "+time=1", "+tries=1"]) is not None,
                             peers.START_TIMEOUT, interval=0.2)
        except ChildFailed as failure:
            bl.log(f"{name} did not start (exit {failure.returncode}):\n{failure.log_tail}")
            res.update(error="did not start", log=failure.log_tail)
            return False
        res["warm"] = warm(s, qfile, commands)
        second = res["warm"]["passes"][-1]
        good, res["answers"], res["verify"] = check_answers(s, questions)
        if second.get("queries_lost", 1) or set(second.get("rcodes", {})) != {"NOERROR"}:
            res["verify"].append(f"second pass over the query file: {second.get('rcodes')}, "
                                 f"lost {second.get('queries_lost')}")
            good = False
        for note in res["verify"]:
            bl.log(f"{name} verify: {note}")
        if not good:
            res["error"] = "wrong answers (not measured)"
            return False
        res["loadavg_before"] = os.getloadavg()
        measured_runs(s, upstream, qfile, args.seconds, args.runs, res, commands)
        measure_latency(s, qfile, args.seconds, args.runs, args.rate, res, commands, tmp)
        if child.poll() is not None:
            res["error"] = f"exited during the run (status {child.returncode})"
            return False
        return True
    finally:
        child.stop()


def versions() -> dict:
    out = {}
    for name, argv in {"unbound": [program("unbound"), "-V"], "dnsmasq": [program("dnsmasq"), "--version"],
                       "knotd": [program("knotd"), "--version"]}.items():
        try:
            text = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
            out[name] = next((line for line in text.splitlines() if line.strip()), None)
        except (OSError, subprocess.TimeoutExpired):
            out[name] = None
    return out


def print_report(results: dict, json_path: str) -> None:
    print(f"geotm forwarding benchmark: cache hits of {results['query_file_lines']} questions "
          f"({results['names']} names under {fl.UPSTREAM_ZONE}, A and every {fl.AAAA_EVERY}th AAAA, TTL {fl.TTL}), "
          f"{results['runs']} x {results['seconds']:g} s per server (median), server on core {peers.SERVER_CORE}, "
          f"dnsperf on core {LOAD_CORE}; latency at a fixed {results['rate']} qps")
    print(f"load average before: {results['loadavg_before']}, after: {results.get('loadavg_after')}")
    print()
    print(fl.format_table(results["rows"]))
    print()
    print(fl.format_targets(results["targets"]))
    if results.get("same_as_unbound") is not None:
        print(f"geotm's answers to the sampled questions equal unbound's: {'yes' if results['same_as_unbound'] else 'NO'}")
    for name in results["failed"]:
        print(f"FAILED {name}: {results['servers'][name].get('error')}")
    sat = [r["server"] for r in results["rows"] if r.get("saturated")]
    if sat:
        print(f"note: {', '.join(sat)} could not sustain {results['rate']} qps in the latency run: its latency is queueing")
    print("srv_cpu = server cores busy during the measured runs (below ~0.95: dnsperf-bound or a shared core); "
          "us/q = server CPU microseconds per answer at saturation (user: in the server's own code, the rest in "
          "the kernel); us/q@rate = the same at the fixed rate; up_cpu = the upstream's cores busy meanwhile "
          "(0: all cache hits); geotm/peer = geotm's qps / this row's")
    print()
    print("commands:")
    for c in results["commands"]:
        print("  " + c)
    print(f"\nraw results: {json_path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/forward.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15, help="measured seconds per dnsperf run (default 15)")
    ap.add_argument("--runs", type=int, default=3, help="measured runs at saturation and at the fixed rate (default 3)")
    ap.add_argument("--rate", type=int, default=20000, help="fixed load of the latency runs, qps (default 20000)")
    ap.add_argument("--names", type=int, default=fl.NAMES, help=f"names in the upstream zone (default {fl.NAMES})")
    ap.add_argument("--only", default="", help="comma-separated forwarders: " + ",".join(fl.SERVERS))
    ap.add_argument("--skip-install", action="store_true", help="do not apt-get install missing programs")
    ap.add_argument("--config", default=str(ROOT / "config" / "example.yaml"), help="geotm config (its zone)")
    ap.add_argument("--json", default=str(HERE / "results" / "forward.json"), help="raw results file")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args(argv)
    servers = list(fl.SERVERS)
    if args.only:
        servers = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = set(servers) - set(fl.SERVERS)
        if unknown:
            ap.error(f"unknown forwarder(s) {sorted(unknown)}")
    if args.seconds > 120 or args.runs > 10 or not 0 < args.rate <= 500_000:
        ap.error("bounded: --seconds <= 120, --runs <= 10, 0 < --rate <= 500000")

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    if not args.skip_install:
        missing = [pkg for pkg, binary in PACKAGES.items() if not peers.have(binary)]
        if missing:
            peers.install(missing)
    for tool in ("dnsperf", "dig", "taskset", "knotd", *(s for s in servers if s != "geotm")):
        if not peers.have(tool):
            bl.log(f"{tool} is missing")
            return 2
    if (os.cpu_count() or 1) < 2:
        bl.log("needs 2 cores (server on core 0, dnsperf on core 1)")
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="geotm-bench-forward-"))
    lines = fl.query_lines(args.names)
    results: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": args.seconds, "runs": args.runs,
        "rate": args.rate, "names": args.names, "query_file_lines": len(lines), "warmup_s": WARMUP_S,
        "clients": CLIENTS, "outstanding": OUTSTANDING, "versions": versions(),
        "loadavg_before": os.getloadavg(), "servers": {},
    }
    commands: list[str] = []
    failed: list[str] = []
    try:
        qfile = tmp / "queries.txt"
        qfile.write_text("\n".join(lines) + "\n")
        questions = fl.sample(lines)
        upstream = start_upstream(tmp, args.names)
        commands.append(f"# upstream: {upstream.desc}")
        commands.append(shlex.join(upstream.argv))
        for name in servers:
            if not run_server(name, args, tmp, qfile, questions, upstream, results, commands):
                failed.append(name)
    except KeyboardInterrupt:
        bl.log("interrupted: stopping everything")
        stop_all(grace=3.0)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return 130
    except ChildFailed as failure:
        bl.log(f"the upstream did not start:\n{failure}")
        stop_all(grace=3.0)
        return 1
    finally:
        stop_all(grace=3.0)
    if args.keep_tmp:
        bl.log(f"temp dir kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    results["loadavg_after"] = os.getloadavg()
    results["rows"] = fl.build_rows(results)
    results["targets"] = fl.targets(results["rows"])
    answers = {name: results["servers"].get(name, {}).get("answers") for name in ("geotm", "unbound")}
    results["same_as_unbound"] = answers["geotm"] == answers["unbound"] if all(answers.values()) else None
    results["commands"] = commands
    results["failed"] = failed
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_report(results, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
