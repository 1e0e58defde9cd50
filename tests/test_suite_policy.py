"""The test suite's own rules: slow tests are left out of the default run and come back on request,
and a missing tool skips a test locally but fails it under GEOTM_REQUIRE_TOOLS=1 (CI)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _pytest.outcomes import Failed, Skipped

from tests import tools
from tests.dnstest import ROOT

SLOW_TEST = "tests/test_bench_rebuild.py::test_live_reload_bench_finishes_at_a_thousand_registries"

SELECTION = [
    # (case, pytest arguments, extra environment, the slow test collected)
    ("default", ["tests/test_bench_rebuild.py"], {}, False),
    ("--slow", ["--slow", "tests/test_bench_rebuild.py"], {}, True),
    ("GEOTM_SLOW=1", ["tests/test_bench_rebuild.py"], {"GEOTM_SLOW": "1"}, True),
    ("-m slow", ["-m", "slow", "tests/test_bench_rebuild.py"], {}, True),
    ("named", [SLOW_TEST], {}, True),
]


@pytest.mark.parametrize("args,env,collected", [
    pytest.param(*c[1:], id=c[0], marks=() if c[0] == "default" else pytest.mark.slow) for c in SELECTION])
def test_slow_tests_run_only_on_request(args, env, collected):
    run = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *args],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**{k: v for k, v in os.environ.items() if k != "GEOTM_SLOW"}, **env})
    assert (SLOW_TEST in run.stdout) is collected, run.stdout + run.stderr
    assert run.returncode == (0 if collected else 5), run.stdout + run.stderr


@pytest.mark.parametrize("required,outcome", [("1", Failed), ("", Skipped)], ids=["ci-fails", "local-skips"])
def test_a_missing_tool_fails_only_when_tools_are_required(monkeypatch, required, outcome):
    monkeypatch.setenv("GEOTM_REQUIRE_TOOLS", required)
    with pytest.raises((Failed, Skipped), match="geotm-no-such-tool not installed, needed to test the policy") as got:
        tools.require_tool("geotm-no-such-tool", "to test the policy")
    assert got.type is outcome


def test_a_present_tool_is_found(monkeypatch):
    monkeypatch.setenv("GEOTM_REQUIRE_TOOLS", "1")
    assert tools.require_tool("sh", "to test the policy").endswith("/sh")
