"""dnsperf's output read back (the summary, per-query latencies of a -v run), nearest-rank percentiles
and medians, and the table bench/run prints with its parser. Pure (no processes, no network)."""
from __future__ import annotations

import math
import re
import statistics

# --------------------------------------------------------------------------------------------
# dnsperf output


_NUM = r"([0-9]+(?:\.[0-9]+)?)"


def parse_dnsperf(text: str) -> dict:
    """The summary dnsperf 2.x prints at the end of a run: queries sent/completed/lost, qps,
    average latency (s) with min/max and stddev, run time, response codes."""
    out: dict = {}

    def grab(key: str, pattern: str, conv=float):
        mm = re.search(pattern, text)
        if mm:
            out[key] = conv(mm.group(1))

    grab("queries_sent", r"Queries sent:\s+(\d+)", int)
    grab("queries_completed", r"Queries completed:\s+(\d+)", int)
    grab("queries_lost", r"Queries lost:\s+(\d+)", int)
    grab("queries_interrupted", r"Queries interrupted:\s+(\d+)", int)
    grab("qps", r"Queries per second:\s+" + _NUM)
    grab("run_time_s", r"Run time \(s\):\s+" + _NUM)
    grab("avg_latency_s", r"Average Latency \(s\):\s+" + _NUM)
    grab("min_latency_s", r"Average Latency \(s\):\s+[0-9.]+\s+\(min\s+" + _NUM)
    grab("max_latency_s", r"Average Latency \(s\):.*max\s+" + _NUM)
    grab("stddev_latency_s", r"Latency StdDev \(s\):\s+" + _NUM)
    grab("avg_request_bytes", r"Average packet size:\s+request\s+(\d+)", int)
    grab("avg_response_bytes", r"Average packet size:.*response\s+(\d+)", int)
    mm = re.search(r"Response codes:\s+(.*)", text)
    if mm:
        codes = {}
        for part in mm.group(1).split(","):
            m2 = re.match(r"\s*([A-Z]+)\s+(\d+)", part)
            if m2:
                codes[m2.group(1)] = int(m2.group(2))
        out["rcodes"] = codes
    if "qps" not in out:
        raise ValueError("no 'Queries per second' line in dnsperf output")
    return out


# dnsperf -v prints one line per answer:  "> NOERROR contoso.azurecr.test. A 0.000123"
# (and "> T ..." for a query that timed out).
_VERBOSE = re.compile(r"^> ([A-Z]+) (\S+) (\S+) ([0-9]+\.[0-9]+)\s*$")


def parse_verbose_latencies(text: str) -> tuple[list[float], dict[str, int]]:
    lat, codes = [], {}
    for line in text.splitlines():
        mm = _VERBOSE.match(line)
        if not mm:
            continue
        code = mm.group(1)
        codes[code] = codes.get(code, 0) + 1
        if code != "T":
            lat.append(float(mm.group(4)))
    return lat, codes


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(1, math.ceil(p / 100 * len(s)))
    return s[k - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------------------------
# The printed table, and its parser (for the optional end-to-end test).

TABLE_HEADER = ("server", "qps", "srv_cpu", "load_cpu", "us/query", "qps/core", "limit", "mean_ms",
                "mean_ms@rate", "p99_ms@rate", "p999_ms@rate", "lost", "geotm/peer", "cpu_g/p")
# (row key, cell format) per column after the server's name; parse_table reads them back
_COLUMNS = (("qps", "{:.0f}"), ("cpu", "{:.2f}"), ("load_cpu", "{:.2f}"), ("us_per_query", "{:.2f}"),
            ("qps_per_core", "{:.0f}"), ("limit", "{}"), ("mean_ms", "{:.3f}"), ("rate_mean_ms", "{:.3f}"),
            ("p99_ms", "{:.3f}"), ("p999_ms", "{:.3f}"), ("lost", "{:d}"), ("ratio", "{:.2f}"),
            ("cpu_ratio", "{:.2f}"))


def format_table(rows: list[dict]) -> str:
    def cell(v, fmt):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return fmt.format(v)

    body = [TABLE_HEADER]
    for r in rows:
        body.append((r["server"], *(cell(r.get(key), fmt) for key, fmt in _COLUMNS)))
    return aligned(body)


def aligned(body: list[tuple[str, ...]], rule: bool = True) -> str:
    """Rows of cells as text columns: the first left-aligned, the others right-aligned; with `rule`,
    a line of dashes under the first row (the header)."""
    widths = [max(len(row[i]) for row in body) for i in range(len(body[0]))]
    lines = []
    for i, row in enumerate(body):
        lines.append("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(row)))
        if i == 0 and rule:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_table(text: str) -> list[dict]:
    """Rows of the table printed by format_table, found anywhere in `text`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:2] == ["server", "qps"]:
            break
    else:
        raise ValueError("no table header in output")
    rows = []
    n = len(_COLUMNS)
    for line in lines[i + 2:]:
        if not line.strip():
            break
        parts = line.split()
        if len(parts) < n + 1:
            break
        row: dict = {"server": " ".join(parts[:-n])}
        for (key, fmt), text_value in zip(_COLUMNS, parts[-n:]):
            if text_value == "-":
                row[key] = None
            elif fmt == "{}":
                row[key] = text_value
            elif fmt == "{:d}":
                row[key] = int(text_value)
            else:
                row[key] = float(text_value)
        rows.append(row)
    return rows
