"""The attack reproductions in bench/attacks/ run for real (short and small) against a dnsd they start
on loopback, report PASS on this code, and refuse any address that is not loopback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.dnstest import ROOT

ATTACKS = ROOT / "bench" / "attacks"

#   script                args                                                  exit  printed
CASES = [
    ("connection_hog.py", ["--connections", "200", "--duration", "4"], 0,
     "PASS: every probe from another source was answered within 100 ms"),
    ("fd_exhaustion.py", ["--nofile", "256", "--clients", "400", "--duration", "5", "--poll", "0.2", "--ttl", "2"], 0,
     "PASS: the global name kept avoiding the degraded replica"),
    ("connection_hog.py", ["--hog-source", "10.0.0.2"], 2, "is not a loopback address"),
    ("connection_hog.py", ["--connections", "100000"], 2, "must be between 0 and 20000"),
    ("fd_exhaustion.py", ["--duration", "3600"], 2, "must be between 0 and 600"),
]


@pytest.mark.parametrize("script, args, code, printed", [  # the real attacks (exit 0) run seconds: slow
    pytest.param(*c, id=f"{c[0].removesuffix('.py')}-{i}", marks=pytest.mark.slow if c[2] == 0 else ())
    for i, c in enumerate(CASES)])
def test_attack_script(script, args, code, printed):
    run = subprocess.run([sys.executable, str(ATTACKS / script), *args], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    output = run.stdout + run.stderr
    assert run.returncode == code, output
    assert printed in output, output
