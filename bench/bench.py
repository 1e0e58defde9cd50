"""geotm benchmark: geotm's dnsd against Knot DNS, PowerDNS (static and LUA) and gdnsd serving the
same names, measured with dnsperf on loopback. Run through `bench/run`; see bench/README.md.
This module is the run itself: its arguments, each server in turn (prepare, start, verify, measure,
stop) and the results file; peers.py, verify.py, measure.py and report.py do the parts."""
from __future__ import annotations

import argparse
import json
import os
import shlex
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
import manysrc  # noqa: E402
import peers  # noqa: E402
from measure import CLIENTS, OUTSTANDING, WARMUP_S, measure, measure_latency  # noqa: E402
from report import build_rows, print_report, versions  # noqa: E402
from verify import verify  # noqa: E402

from dnsd.common.children import ChildFailed, stop_all  # noqa: E402

DEFAULT_RATE = 5000               # fixed load when geotm was not measured


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    ap.add_argument("--seconds", type=float, default=15, help="measured seconds per dnsperf run (default 15)")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per server of the main mix and of the fixed-load latency run (default 3)")
    ap.add_argument("--variant-runs", type=int, default=1,
                    help="runs of the ECS, VNet-source and 1,000-source rows (default 1; 0 leaves them out)")
    ap.add_argument("--only", default="", help="comma-separated servers: geotm,geotm-w2,knot,pdns,pdns-lua,gdnsd")
    ap.add_argument("--skip-install", action="store_true", help="do not apt-get install missing peers")
    ap.add_argument("--rate", type=int, default=0,
                    help="fixed load (qps) for the latency run; default half of geotm's measured qps")
    ap.add_argument("--config", default=str(ROOT / "config" / "example.yaml"), help="geotm config to mirror")
    ap.add_argument("--json", default=str(HERE / "results" / "latest.json"), help="raw results file")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args(argv)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # also SIGINT: a shell that starts us in the background leaves SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler of its own
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    servers = peers.all_servers()
    if not peers.dnsd_has_workers():
        servers = [s for s in servers if s.name != "geotm-w2"]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = set(wanted) - {s.name for s in peers.all_servers()}
        if unknown:
            ap.error(f"unknown server(s) {sorted(unknown)}")
        if "geotm-w2" in wanted and not any(s.name == "geotm-w2" for s in servers):
            bl.log("geotm-w2 skipped: `dnsd serve --help` has no --workers")
        servers = [s for s in servers if s.name in wanted]

    if not args.skip_install:
        peers.install()
    for tool in ("dnsperf", "dig", "taskset"):
        if not peers.have(tool):
            bl.log(f"{tool} is missing")
            return 2
    if (os.cpu_count() or 1) < 2:
        bl.log("needs 2 cores (server on core 0, dnsperf on core 1)")
        return 2

    m = bl.load_model(args.config)
    tmp = Path(tempfile.mkdtemp(prefix="geotm-bench-"))
    failed: list[str] = []
    results: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": args.seconds, "runs": args.runs,
        "variant_runs": args.variant_runs, "warmup_s": WARMUP_S, "clients": CLIENTS, "outstanding": OUTSTANDING,
        "ecs_subnet": bl.ECS_SUBNET, "vnet_source": bl.VNET_SOURCE, "many_sources": manysrc.SOURCES,
        "many_sources_first": manysrc.FIRST_SOURCE, "versions": versions(), "servers": {},
    }
    commands: list[str] = []
    rate = args.rate
    try:
        qfile = tmp / "queries.txt"
        lines = bl.query_lines(m)
        qfile.write_text("\n".join(lines) + "\n")
        mix = {}
        for line in lines:
            c = bl.classify_query(m, line)
            mix[c] = mix.get(c, 0) + 1
        results["query_mix"] = mix
        results["query_file_lines"] = len(lines)
        many = manysrc.build(tmp) if args.variant_runs > 0 else None
        many_qfile = tmp / "queries.bin"
        manysrc.write_query_file(lines, many_qfile)
        for s in servers:
            res = results["servers"].setdefault(s.name, {"desc": s.desc, "variants": {}})
            if not peers.have(s.binary) and not s.is_geotm:
                bl.log(f"{s.name}: {s.binary} not installed")
                res["error"] = f"{s.binary} not installed"
                failed.append(s.name)
                continue
            peers.prepare(s, m, tmp, Path(args.config))
            res["argv"] = s.argv
            res["port"] = s.port
            commands.append(f"# {s.name}: {s.desc}")
            commands.append(shlex.join(s.argv))
            bl.log(f"starting {s.name}: {shlex.join(s.argv)}")
            child = peers.start(s, tmp / f"{s.name}.log", tmp / s.name)
            res["pid"] = child.pid
            try:
                try:
                    peers.wait_answering(s, m)
                except ChildFailed as failure:
                    logtail = child.log_text()[-3000:]
                    bl.log(f"{s.name} did not start (exit {failure.returncode}):\n{logtail}")
                    res["error"] = "did not start"
                    res["log"] = logtail
                    failed.append(s.name)
                    continue
                good, notes = verify(m, s.port, s.fixed, s.is_geotm)
                res["verify"] = notes
                for n in notes:
                    bl.log(f"{s.name} verify: {n}")
                if not good:
                    res["error"] = "wrong answers (not measured)"
                    failed.append(s.name)
                    continue
                res["loadavg_before"] = os.getloadavg()
                measure(s, qfile, args.seconds, args.runs, args.variant_runs, res, commands)
                if many is not None:
                    manysrc.measure_many_sources(s, many, many_qfile, args.seconds, args.variant_runs, res, commands)
                if not rate:
                    gq = results["servers"].get("geotm", {}).get("variants", {}).get("main", {}).get("runs", [])
                    qps = [r["qps"] for r in gq if "qps" in r]
                    rate = int(dnsperfout.median(qps) / 2) if qps else DEFAULT_RATE
                    results["rate_from"] = "half of geotm's median qps" if qps else "default"
                measure_latency(s, qfile, args.seconds, args.runs, rate, res, commands, tmp)
                if child.poll() is not None:
                    res["error"] = f"exited during the run (status {child.returncode})"
                    failed.append(s.name)
            finally:
                child.stop()
        results["rate"] = rate
    except KeyboardInterrupt:
        bl.log("interrupted: stopping everything")
        stop_all(grace=3.0)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return 130
    finally:
        stop_all(grace=3.0)
    if args.keep_tmp:
        bl.log(f"temp dir kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = build_rows(results)
    results["rows"] = rows
    results["commands"] = commands
    results["failed"] = failed
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")

    print_report(results, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
