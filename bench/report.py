"""What bench/run reports: the servers' versions, the table rows (medians per server and row kind,
geotm's ratio to each peer) and the printed summary with the commands that made it."""
from __future__ import annotations

import re
import subprocess

import dnsperfout
from measure import LOAD_CORE, VARIANT_LABEL, VARIANTS
from peers import SERVER_CORE


def versions() -> dict:
    out = {}
    for name, argv in {"knotd": ["knotd", "--version"], "pdns_server": ["pdns_server", "--version"],
                       "gdnsd": ["gdnsd", "-h"], "dnsperf": ["dnsperf", "-h"]}.items():
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = r.stdout + r.stderr
            mm = re.search(r"(?:version|Version|Server)\s+v?([0-9][0-9.]*)", text)
            out[name] = mm.group(1) if mm else None
        except (OSError, subprocess.TimeoutExpired):
            out[name] = None
    return out


def build_rows(results: dict) -> list[dict]:
    rows = []
    geotm_qps: dict[str, float] = {}
    for name, res in results["servers"].items():
        for variant, v in res.get("variants", {}).items():
            qps = [r["qps"] for r in v["runs"] if "qps" in r]
            v["median_qps"] = dnsperfout.median(qps) if qps else None
            if name == "geotm" and qps:
                geotm_qps[variant] = v["median_qps"]
    for name, res in results["servers"].items():
        for variant in VARIANTS:
            v = res.get("variants", {}).get(variant)
            if not v or not v["runs"]:
                continue
            runs = [r for r in v["runs"] if "qps" in r]
            row = {"server": name + VARIANT_LABEL[variant], "qps": v.get("median_qps"),
                   "mean_ms": dnsperfout.median([r["avg_latency_s"] * 1000 for r in runs if "avg_latency_s" in r]) if runs
                   else None,
                   "lost": sum(r.get("queries_lost", 0) for r in runs) if runs else None,
                   "cpu": dnsperfout.median([r["server_cpu_cores"] for r in runs if r.get("server_cpu_cores") is not None])
                   if runs else None,
                   "ratio": None, "rate_mean_ms": None, "p99_ms": None}
            if variant == "main" and "latency" in res:
                row["rate_mean_ms"] = res["latency"].get("mean_ms")
                row["p99_ms"] = res["latency"].get("p99_ms")
                row["saturated"] = res["latency"].get("saturated")
            if not name.startswith("geotm") and geotm_qps.get(variant) and row["qps"]:
                row["ratio"] = geotm_qps[variant] / row["qps"]
            rows.append(row)
    return rows


def print_report(results: dict, json_path: str) -> None:
    """The summary on stdout: how it was measured, the query mix, the table, failures, the commands."""
    rows, rate, failed = results["rows"], results["rate"], results["failed"]
    print(f"geotm benchmark: {results['runs']} x {results['seconds']:g} s per server (median), "
          f"{results['warmup_s']} s warm-up before each run excluded; server on core {SERVER_CORE}, dnsperf on "
          f"core {LOAD_CORE}; latency at a fixed {rate} qps")
    print(f"query mix ({results['query_file_lines']} lines): "
          + ", ".join(f"{k} {v}" for k, v in sorted(results["query_mix"].items())))
    print()
    print(dnsperfout.format_table(rows))
    print()
    for name in failed:
        print(f"FAILED {name}: {results['servers'][name].get('error')}")
    sat = [r["server"] for r in rows if r.get("saturated")]
    if sat:
        print(f"note: {', '.join(sat)} could not sustain {rate} qps in the latency run: its latency is queueing")
    print("ratio = geotm qps / this server's qps in the same row kind (main, +ecs, vnet-src); "
          "srv_cpu = server cores busy during the measured runs (below ~0.95: dnsperf-bound)")
    print()
    print("commands:")
    for c in results["commands"]:
        print("  " + c)
    print(f"\nraw results: {json_path}")
