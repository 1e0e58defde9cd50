"""bench/rebuild.py --live against a real dnsd with a 1,000-registry config: it finishes (the server's
start-up log, over 64 KiB at this size, once filled an unread stderr pipe and hung both), reloads, and
reports answer latency during the reload."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests import harness


@pytest.mark.slow
def test_live_reload_bench_finishes_at_a_thousand_registries():
    script = harness.REPO_ROOT / "bench" / "rebuild.py"
    done = subprocess.run([sys.executable, str(script), "--live", "--live-only", "--counts", "1000", "--reloads", "1",
                           "--changes", "0", "--rate", "200", "--p99-target-ms", "100000"],
                          capture_output=True, text=True, timeout=300, cwd=harness.REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert re.search(r"^live: 1 reloads \(0 failed\) of a 1000-registry config", done.stdout, re.M), done.stdout
    during = re.search(r"^ +during reload +(\d+) +(\d+) +([\d.]+)ms +([\d.]+)ms", done.stdout, re.M)
    assert during and int(during[1]) > 100 and int(during[2]) == 0, done.stdout
