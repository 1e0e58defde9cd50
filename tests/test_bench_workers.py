"""bench/workers.py's parts that need no load: counting a port's UDP sockets (one per SO_REUSEPORT
worker) from /proc/net/udp, and the scaling table from runs (the median run, the load-generator flag)."""
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
    # (workers, server cores, load core, runs, qps shown, qps per busy core, load-generator limited)
    (1, [0], 1, [run(90e3, 1.0, 0.5, [1.0]), run(100e3, 1.0, 0.5, [1.0]), run(120e3, 1.0, 0.5, [1.0])],
     100e3, 100e3, False),
    (1, [0], 1, [run(100e3, 0.8, 0.95, [0.8])], 100e3, 125e3, True),  # dnsperf used its whole core
    (2, [0, 1], 1, [run(150e3, 1.5, 0.5, [0.8, 0.7])], 150e3, 100e3, True),  # dnsperf shares a worker's core
]


@pytest.mark.parametrize("workers, cores, load_core, runs, qps, per_core, limited", ROW_CASES)
def test_a_row_shows_its_median_run_and_whether_the_load_generator_was_the_limit(workers, cores, load_core, runs,
                                                                                  qps, per_core, limited):
    row = bw.summarize({"workers": workers, "server_cores": cores, "load_core": load_core, "runs": runs,
                        "load_shares_a_server_core": load_core in cores})
    assert (row["qps"], row["qps_per_busy_core"], row["qps_per_worker"], row["load_limited"]) == \
        (qps, per_core, qps / workers, limited)
    line = bw.format_rows([row]).splitlines()[-1]
    assert line.startswith(f"| {workers} | ") and line.endswith("| load generator |" if limited else "| server |")
