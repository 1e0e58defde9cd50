"""What response rate limiting costs: dnsperf against dnsd without `server.rate_limit`, with it at a
rate nothing reaches (the accounting alone), and with a rate that limits. See bench/README-rrl.md.

    bench/rrl.py [--seconds 10] [--runs 3] [--limit-rate 20] [--limit-load 20000]

Each dnsd runs pinned to core 0 and dnsperf to core 1 (as bench/run); the off/on servers run side by
side and their runs alternate, so drift in the shared machine's load hits both alike. The limiting
run offers a fixed load (-Q) from one source and reads the server's own counters from /metrics."""
from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # bench's modules, and dnsd when it is not installed

import benchlib as bl  # noqa: E402
import dnsperfout  # noqa: E402
import peerconfig  # noqa: E402
import peers  # noqa: E402
from measure import WARMUP_S, dnsperf_argv, group_cpu_seconds, run_dnsperf  # noqa: E402

from dnsd.common.children import ChildFailed, free_port, stop_all  # noqa: E402

UNLIMITED = 1_000_000  # responses_per_second no bucket reaches in a run: only the accounting is measured
ADMIN_TOKEN = "bench-rrl"  # RRL counters are not among the public metrics


def dnsd_config(bench_document: dict, rate_limit: dict | None, admin_port: int | None) -> str:
    """The bench copy of the config (benchlib.geotm_bench_document) with `rate_limit` and the admin API."""
    doc = copy.deepcopy(bench_document)
    if rate_limit is not None:
        doc["server"]["rate_limit"] = rate_limit
    if admin_port:
        doc["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    return yaml.safe_dump(doc, sort_keys=False)


def start_dnsd(name: str, tmp: Path, config_path: Path, model: bl.ZoneModel, rate_limit: dict | None,
               admin_port: int | None = None) -> peers.Server:
    s = peers.Server(name, name, "eastus", "dnsd", is_geotm=True)
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    s.port = free_port()
    cfg = d / "geotm.yaml"
    (d / "admin-token").write_text(ADMIN_TOKEN)  # geotm_bench_document's admin.token_file
    cfg.write_text(dnsd_config(peerconfig.geotm_bench_document(config_path, d, s.port), rate_limit, admin_port))
    s.argv = ["taskset", "-c", peers.SERVER_CORE, peers.dnsd_program(), "serve", "--config", str(cfg), "--listen",
              f"127.0.0.1:{s.port}", "--log-level", "warning"]
    if not admin_port:
        s.argv += ["--admin-listen", "off"]
    peers.start(s, d / "dnsd.log", ROOT)
    try:
        peers.wait_answering(s, model)
    except ChildFailed:
        raise SystemExit(f"{name} did not start: see {d / 'dnsd.log'}") from None
    return s


def dnsperf_run(s: peers.Server, qfile: Path, seconds: float, extra: list[str], warmup: bool = True) -> dict:
    if warmup:
        run_dnsperf(dnsperf_argv(s.port, qfile, WARMUP_S, extra), WARMUP_S + 30)
    argv = dnsperf_argv(s.port, qfile, seconds, extra)
    cpu0, t0 = group_cpu_seconds(s.child.pid), time.monotonic()
    rc, out = run_dnsperf(argv, seconds + 60)
    cpu1, t1 = group_cpu_seconds(s.child.pid), time.monotonic()
    parsed = dnsperfout.parse_dnsperf(out)
    parsed["server_cpu_cores"] = round((cpu1 - cpu0) / (t1 - t0), 3)
    # on a shared machine the server may not get its whole core: qps per busy server core compares fairer
    parsed["qps_per_core"] = round(parsed["qps"] / parsed["server_cpu_cores"]) if parsed["server_cpu_cores"] else None
    parsed["argv"] = shlex.join(argv)
    return parsed


def rrl_counters(admin_port: int) -> dict[str, float]:
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}/metrics",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    text = urllib.request.urlopen(request, timeout=5).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(geotm_rrl_\S+) (\S+)$", text, re.M)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--limit-rate", type=int, default=20, help="responses_per_second of the limiting run")
    ap.add_argument("--limit-load", type=int, default=20000, help="qps offered in the limiting run (dnsperf -Q)")
    ap.add_argument("--config", default=str(ROOT / "config" / "example.yaml"))
    ap.add_argument("--json", default=str(HERE / "results" / "rrl.json"))
    args = ap.parse_args(argv)
    if args.seconds > 60 or args.runs > 10 or args.limit_load > 200_000:
        ap.error("bounded: --seconds <= 60, --runs <= 10, --limit-load <= 200000")
    tmp = Path(tempfile.mkdtemp(prefix="geotm-bench-rrl-"))
    model = bl.load_model(args.config)
    qfile = tmp / "queries.txt"
    qfile.write_text("\n".join(bl.query_lines(model)) + "\n")
    result: dict = {"loadavg_before": open("/proc/loadavg").read().split()[:3], "runs": {"off": [], "on": []}}
    try:
        off = start_dnsd("off", tmp, Path(args.config), model, None)
        on = start_dnsd("on", tmp, Path(args.config), model, {"responses_per_second": UNLIMITED})
        for i in range(args.runs):
            for name, server in (("off", off), ("on", on)) if i % 2 == 0 else (("on", on), ("off", off)):
                run = dnsperf_run(server, qfile, args.seconds, [])
                result["runs"][name].append(run)
                bl.log(f"{name} run {i + 1}/{args.runs}: {run['qps']:.0f} qps, lost {run['queries_lost']}, "
                      f"server {run['server_cpu_cores']} cores, {run['qps_per_core']} qps per server core")
        off.child.stop()
        on.child.stop()
        qps = {name: dnsperfout.median([r["qps"] for r in runs]) for name, runs in result["runs"].items()}
        result["qps_median"] = qps
        result["cost_percent"] = round(100 * (1 - qps["on"] / qps["off"]), 1)
        per_core = {name: dnsperfout.median([r["qps_per_core"] for r in runs]) for name, runs in result["runs"].items()}
        result["qps_per_core_median"] = per_core
        result["cost_percent_per_core"] = round(100 * (1 - per_core["on"] / per_core["off"]), 1)

        # limiting: a fixed load from one source; every query beyond the rate is dropped or slipped
        admin_port = free_port()
        limited = start_dnsd("limiting", tmp, Path(args.config), model,
                             {"responses_per_second": args.limit_rate, "slip": 2}, admin_port)
        extra = ["-Q", str(args.limit_load), "-t", "1", "-q", str(args.limit_load)]
        run_dnsperf(dnsperf_argv(limited.port, qfile, WARMUP_S, extra), WARMUP_S + 30)
        time.sleep(1.5)  # the warm-up's lost queries time out before the counted run
        before = rrl_counters(admin_port)
        run = dnsperf_run(limited, qfile, args.seconds, extra, warmup=False)
        after = rrl_counters(admin_port)
        limited.child.stop()
        delta = {k: after[k] - before.get(k, 0.0) for k in after if "total" in k}
        run["rrl_counters"] = delta
        sent = run["queries_sent"]
        dropped = sum(v for k, v in delta.items() if k.startswith("geotm_rrl_dropped_total"))
        slipped = sum(v for k, v in delta.items() if k.startswith("geotm_rrl_slipped_total"))
        run["answered_whole"] = whole = run["queries_completed"] - slipped  # dnsperf counts TC replies too
        run["slipped"], run["dropped"] = slipped, dropped
        # queries dnsperf sent that the server never decided on (socket queue overflow, or in flight at the end)
        run["not_processed"] = sent - whole - slipped - dropped
        result["limiting"] = run
        bl.log(f"limiting at {args.limit_rate}/s under {args.limit_load} qps offered: sent {sent:.0f}, "
              f"whole {whole:.0f}, slipped {slipped:.0f}, dropped {dropped:.0f}, "
              f"server {run['server_cpu_cores']} cores")
    finally:
        stop_all(grace=3.0)
    print(f"qps median: off {qps['off']:.0f}, on (nothing limited) {qps['on']:.0f}: "
          f"cost {result['cost_percent']}%; per busy server core: off {per_core['off']:.0f}, "
          f"on {per_core['on']:.0f}: cost {result['cost_percent_per_core']}%")
    lim = result["limiting"]
    print(f"limiting ({args.limit_rate}/s, slip 2) under {args.limit_load} qps from 127.0.0.1 for {args.seconds:g} s: "
          f"{lim['queries_sent']:.0f} sent, {lim['answered_whole']:.0f} answered whole, "
          f"{lim['slipped']:.0f} slipped, {lim['dropped']:.0f} dropped, {lim['not_processed']:.0f} not processed; "
          f"server {lim['server_cpu_cores']} cores")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
