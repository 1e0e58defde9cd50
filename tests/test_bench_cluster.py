"""bench/cluster.py: its summary of measured rounds (a table of cases), and a short real run (slow:
real etcd and dnsd processes) that must see every change on every instance."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.dnstest import ROOT
from tests.etcdkit import etcd_binary

sys.path.insert(0, str(ROOT / "bench"))

import cluster as bench_cluster  # noqa: E402


@pytest.mark.parametrize("rounds, last, missed", [
    ([[0.001, 0.004, 0.003], [0.002, 0.001, 0.005]], {"median": 4.5, "max": 5.0, "min": 4.0}, 0),
    ([[0.001, None], [0.002, 0.003]], {"median": 3.0, "max": 3.0, "min": 3.0}, 1),  # a miss is not a figure
    ([[None]], {"median": None, "max": None, "min": None}, 1),
])
def test_a_round_counts_its_slowest_instance(rounds, last, missed):
    result = bench_cluster.summary(1, len(rounds[0]), rounds, 5.0)
    assert result["last_instance_ms"] == last and result["missed"] == missed


@pytest.mark.slow
def test_a_short_real_run_sees_every_change_everywhere(tmp_path):
    etcd_binary()
    out = tmp_path / "cluster.json"
    run = subprocess.run([sys.executable, "bench/cluster.py", "--members", "1", "--dnsd", "2", "--drains", "4",
                          "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())["results"][0]
    assert result["changes"] == 4 and result["missed"] == 0
    assert result["last_instance_ms"]["max"] < 1000
