"""bench/workers.py's parts that need no load: counting a port's UDP sockets (one per SO_REUSEPORT
worker) from /proc/net/udp, and the scaling table from runs (the median run, what limited it)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import workers as bw  # noqa: E402

PROC_NET_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  255: 0100007F:9DBB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2329739 2 0 0
  256: 0100007F:9DBB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2329740 2 0 0
 1148: 00000000:E138 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2329741 2 0 0
"""

SOCKET_CASES = [
    # (port, sockets bound to it)
    (0x9DBB, 2),
    (0xE138, 1),
    (53, 0),
]


@pytest.mark.parametrize("port, sockets", SOCKET_CASES)
def test_sockets_on_a_port_are_counted_from_proc_net_udp(tmp_path, port, sockets):
    table = tmp_path / "udp"
    table.write_text(PROC_NET_UDP)
    assert bw.udp_sockets_on(port, str(table)) == sockets


def run(qps: float, server: float, load: float, workers: list[float]) -> dict:
    return {"qps": qps, "server_cpu_cores": server, "load_cpu_cores": load, "worker_cpu_cores": workers,
            "queries_lost": 0}


ROW_CASES = [
    # (workers, server cores, load core, runs, qps shown, qps per busy core, what limited it)
    (1, [0], 1, [run(90e3, 1.0, 0.5, [1.0]), run(100e3, 1.0, 0.5, [1.0]), run(120e3, 1.0, 0.5, [1.0])],
     100e3, 100e3, "server"),
    (1, [0], 1, [run(100e3, 0.8, 0.95, [0.8])], 100e3, 125e3, "load generator"),  # dnsperf used its whole core
    (2, [0, 1], 1, [run(150e3, 1.5, 0.5, [0.8, 0.7])], 150e3, 100e3, "load generator"),  # shares a worker's core
    (1, [0], 1, [run(50e3, 0.4, 0.3, [0.4])], 50e3, 125e3, "other loads"),  # neither had its core
]


@pytest.mark.parametrize("workers, cores, load_core, runs, qps, per_core, limit", ROW_CASES)
def test_a_row_shows_its_median_run_and_what_limited_it(workers, cores, load_core, runs, qps, per_core, limit):
    row = bw.summarize({"workers": workers, "server_cores": cores, "load_core": load_core, "runs": runs,
                        "load_shares_a_server_core": load_core in cores})
    assert (row["qps"], row["qps_per_busy_core"], row["qps_per_worker"], row["limit"]) == \
        (qps, per_core, qps / workers, limit)
    line = bw.format_rows([row]).splitlines()[-1]
    assert line.startswith(f"| {workers} | ") and line.endswith(f"| {limit} |")
