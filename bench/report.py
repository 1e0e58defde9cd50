"""What bench/run reports: the servers' versions, the table rows (medians per server and row kind:
qps, CPU per answered query, qps per busy server core, which side was the limit, geotm's ratio to
each peer in qps and in CPU per query) and the printed summary with the commands that made it."""
from __future__ import annotations

import re
import subprocess

import dnsperfout
from measure import LOAD_CORE, VARIANT_LABEL
from peers import SERVER_CORE

# a core at least this busy during a full-speed run was the limit (the rest of a second goes to
# wake-ups and the machine's other work)
BUSY = 0.9


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


def limit_of(server_cores: float | None, load_cores: float | None) -> str | None:
    """Which side held a full-speed run back: "server" (its core busy), "load" (the load generator's
    core saturated while the server's was not: the qps is the load generator's, compare CPU per query
    instead), "neither" (both below: the machine), None when unknown."""
    if server_cores is None:
        return None
    if server_cores >= BUSY:
        return "server"
    if load_cores is None:
        return None
    return "load" if load_cores >= BUSY else "neither"


def _median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return dnsperfout.median(values) if values else None


def build_rows(results: dict) -> list[dict]:
    rows = []
    geotm: dict[str, dict] = {}  # row kind -> geotm's row (for the ratios)
    for name, res in results["servers"].items():
        for variant, v in res.get("variants", {}).items():
            qps = [r["qps"] for r in v["runs"] if "qps" in r]
            v["median_qps"] = dnsperfout.median(qps) if qps else None
    for name, res in results["servers"].items():
        for variant in VARIANT_LABEL:
            v = res.get("variants", {}).get(variant)
            if not v or not v["runs"]:
                continue
            runs = [r for r in v["runs"] if "qps" in r]
            row = {"server": name + VARIANT_LABEL[variant], "kind": variant, "qps": v.get("median_qps"),
                   "mean_ms": dnsperfout.median([r["avg_latency_s"] * 1000 for r in runs if "avg_latency_s" in r]) if runs
                   else None,
                   "lost": sum(r.get("queries_lost", 0) for r in runs) if runs else None,
                   "cpu": _median_of(runs, "server_cpu_cores"),
                   "load_cpu": _median_of(runs, "load_cpu_cores"),
                   "us_per_query": _median_of(runs, "cpu_us_per_query"),
                   "qps_per_core": _median_of(runs, "qps_per_core"),
                   "ratio": None, "cpu_ratio": None, "rate_mean_ms": None, "p99_ms": None, "p999_ms": None}
            row["limit"] = limit_of(row["cpu"], row["load_cpu"])
            if variant == "main" and "latency" in res:
                row["rate_mean_ms"] = res["latency"].get("mean_ms")
                row["p99_ms"] = res["latency"].get("p99_ms")
                row["p999_ms"] = res["latency"].get("p999_ms")
                row["rate_us_per_query"] = res["latency"].get("cpu_us_per_query")
                row["saturated"] = res["latency"].get("saturated")
            if name == "geotm":
                geotm[variant] = row
            rows.append(row)
    for row in rows:
        ours = geotm.get(row["kind"])
        if ours is None or row["server"].startswith("geotm"):
            continue
        if ours["qps"] and row["qps"]:
            row["ratio"] = ours["qps"] / row["qps"]
        if ours["us_per_query"] and row["us_per_query"]:
            # geotm's CPU per answered query over this server's: below 1, geotm is cheaper per query
            row["cpu_ratio"] = ours["us_per_query"] / row["us_per_query"]
    return rows


def cpu_ratio_lines(rows: list[dict]) -> list[str]:
    """'geotm CPU/query = 1.12 x knot' for every peer row with both figures."""
    out = []
    for row in rows:
        if row.get("cpu_ratio") is None:
            continue
        kind = row["kind"]
        label = VARIANT_LABEL[kind].strip()
        peer = row["server"][: len(row["server"]) - len(VARIANT_LABEL[kind])]
        ours = f"geotm {label}".strip()
        out.append(f"{ours} CPU/query = {row['cpu_ratio']:.2f} x {peer} "
                   f"({row['us_per_query'] * row['cpu_ratio']:.2f} us against {row['us_per_query']:.2f} us)")
    return out


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
    for line in cpu_ratio_lines(rows):
        print(line)
    sat = [r["server"] for r in rows if r.get("saturated")]
    if sat:
        print(f"note: {', '.join(sat)} could not sustain {rate} qps in the latency run: its latency is queueing")
    bound = [r["server"] for r in rows if r.get("limit") == "load"]
    if bound:
        print(f"load-generator-limited (limit=load): {', '.join(bound)}: their qps is the load generator's; "
              "compare us/query and qps/core")
    print(f"srv_cpu, load_cpu = cores busy (server; dnsperf or manysrc) during the measured runs; us/query = "
          f"server CPU per answered query; qps/core = answered queries per busy server core; limit = which "
          f"side was at >= {BUSY} core (load: the load generator, not the server); geotm/peer = geotm qps / "
          f"this row's qps, cpu_g/p = geotm us/query / this row's (below 1: geotm cheaper), same row kind; "
          f"@rate = the fixed-rate run")
    print()
    print("commands:")
    for c in results["commands"]:
        print("  " + c)
    print(f"\nraw results: {json_path}")
