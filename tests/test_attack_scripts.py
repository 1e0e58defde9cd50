"""The attack scripts of bench/attacks/ (issue 9) run against a real dnsd and find nothing: each is
the reproduction of one attack, and each reports failure (exit 1) when the attack works (the ECS one
is shown working from a trusted resolver in tests/test_view_security.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests import harness
from tests.dnstest import ROOT, isolated_example

ATTACKS = ROOT / "bench" / "attacks"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with harness.dnsd(isolated_example(tmp_path_factory.mktemp("attacks"))) as process:
        yield process


SCRIPTS = [
    # (script, arguments, what it prints when the server resists)
    ("ecs_private_leak.py", [], "leaked: none"),
    ("missing_name_servfail.py", [], "every missing name got NXDOMAIN or NODATA"),
    ("log_flood.py", ["--per-kind", "2000"], "  failing: NXDOMAIN 2000"),
    ("protocol_probes.py", [], "opcode 15 with every flag: NOTIMP, opcode 15, flags echoed: none"),
    ("protocol_probes.py", [], "query signed with an unknown key: NOTAUTH, answers 0, TSIG error BADKEY, MAC 0 bytes"),
]


@pytest.mark.parametrize("script,args,expected", SCRIPTS, ids=[f"{s[0]}:{s[2][:30]}" for s in SCRIPTS])
def test_attack_finds_nothing(server, script, args, expected):
    result = subprocess.run([sys.executable, str(ATTACKS / script), "--port", str(server.port), *args],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout


# the scripts that take their target from --server (the others start their own dnsd on 127.0.0.1)
TARGETED = sorted(p.name for p in ATTACKS.glob("*.py") if "loopback_target(" in p.read_text() and p.name != "attacklib.py")


def test_every_targeted_script_is_listed():
    assert {s[0] for s in SCRIPTS} == set(TARGETED)


@pytest.mark.parametrize("script", TARGETED)
def test_attack_scripts_refuse_targets_off_loopback(script):
    result = subprocess.run([sys.executable, str(ATTACKS / script), "--server", "192.0.2.1", "--port", "53"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "only loopback targets" in result.stderr
