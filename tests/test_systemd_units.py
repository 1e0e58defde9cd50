"""deploy/systemd: the units for hosts without Docker. What each must say (user, capabilities, open
files, restart, reload), their command lines parsed by geotm's own CLIs, and `systemd-analyze verify`
on them in a scratch root (with the commands they run stubbed there), which must print nothing."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from dnsd.cli import build_parser as dnsd_parser
from probes.cli import build_parser as probes_parser
from tests.tools import require_tool, unavailable

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
SYSTEM_UNITS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
PARSERS = {"dnsd": dnsd_parser, "probes": probes_parser}


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file: section -> key -> every value given, in order (ExecReload may come twice)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(config: dict, section: str, key: str, default: str | None = None) -> str:
    found = config[section].get(key)
    if found is None:
        assert default is not None, f"[{section}] has no {key}"
        return default
    assert len(found) == 1, f"[{section}] {key} given {len(found)} times"
    return found[0]


@pytest.mark.parametrize("name, capabilities, reload", [
    ("geotm-dnsd.service", "CAP_NET_BIND_SERVICE", ["/opt/geotm/bin/dnsd check-config /etc/geotm/geotm.yaml",
                                                    "/bin/kill -HUP $MAINPID"]),
    ("geotm-probes.service", "", []),  # probes has no SIGHUP handler: a reload signal would end it
])
def test_what_each_unit_says(name, capabilities, reload):
    config = unit(name)
    assert one(config, "Service", "User") == "geotm" and one(config, "Service", "Group") == "geotm"
    assert one(config, "Service", "AmbientCapabilities", "") == capabilities
    assert one(config, "Service", "CapabilityBoundingSet") == capabilities
    assert one(config, "Service", "NoNewPrivileges") == "yes"
    assert int(one(config, "Service", "LimitNOFILE")) >= 65536
    assert one(config, "Service", "Restart") == "on-failure"
    assert config["Service"].get("ExecReload", []) == reload
    assert one(config, "Service", "StateDirectory") == "geotm"
    assert one(config, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in one(config, "Unit", "After").split()


@pytest.mark.parametrize("name", ["geotm-dnsd.service", "geotm-probes.service"])
def test_command_lines_are_geotm_commands(name):
    """Every Exec line that runs geotm parses with that program's own argument parser."""
    config = unit(name)
    for key in ("ExecStartPre", "ExecStart", "ExecReload"):
        for line in config["Service"].get(key, []):
            argv = shlex.split(line)
            program = Path(argv[0]).name
            if program in PARSERS:
                assert argv[0] == f"/opt/geotm/bin/{program}"
                PARSERS[program]().parse_args(argv[1:])  # SystemExit (a failed test) if it does not parse


def test_the_sysusers_file_makes_the_user_the_units_run_as():
    line = next(line for line in (UNITS / "geotm-sysusers.conf").read_text().splitlines()
                if line and not line.startswith("#"))
    kind, user, _uid, _comment, home = shlex.split(line)
    assert (kind, user, home) == ("u", "geotm", "/var/lib/geotm")


def test_systemd_analyze_verify(tmp_path):
    """The units in a scratch root: systemd's own units copied in (verify needs sysinit.target and the
    rest), the absolute commands the units run stubbed as executables. Warnings count as failures."""
    analyze = require_tool("systemd-analyze", "to verify deploy/systemd's units", package="systemd")
    system_units = next((d for d in SYSTEM_UNITS if (d / "sysinit.target").exists()), None)
    if system_units is None:
        unavailable("no systemd unit directory with sysinit.target on this machine (apt-get install systemd)")
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True)
    names = sorted(p.name for p in UNITS.glob("*.service"))
    for name in names:
        shutil.copy(UNITS / name, installed / name)
        config = unit(name)
        for key in ("ExecStartPre", "ExecStart", "ExecReload", "ExecStop"):
            for line in config["Service"].get(key, []):
                command = root / shlex.split(line.lstrip("-+!@:"))[0].lstrip("/")
                command.parent.mkdir(parents=True, exist_ok=True)
                command.write_text("#!/bin/sh\n")
                command.chmod(0o755)
    result = subprocess.run([analyze, "verify", f"--root={root}", "--man=no",
                             *(f"/etc/systemd/system/{name}" for name in names)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
