"""scripts/compose-drill's pure parts (drills.composerun, drills.engine): what the builds are given,
the base image's sources, what the pulling daemon trusts, the compose run's arguments, what the
preflight says is missing, and that CI runs it. The real run is .ci/run's third part; the engine
against a real dockerd is tests/test_engine.py."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from drills import composerun, engine, pki
from drills.labconfig import REGISTRY, REPLICAS, ZONE
from drills.timeline import Measurement, Timeline, summary

ROOT = Path(__file__).resolve().parent.parent
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


@pytest.mark.parametrize("certificates, environment, expected", [
    ({}, {}, {"BASE": "geotm-base:bookworm"}),
    ({"proxy.crt": CA}, {}, {"BASE": "geotm-base:bookworm", "EXTRA_CA": CA + "\n"}),
    ({"a.crt": CA, "sub/b.crt": CA, "c.pem": "not a .crt: update-ca-certificates ignores it too"}, {},
     {"BASE": "geotm-base:bookworm", "EXTRA_CA": CA + "\n" + CA + "\n"}),
    ({}, {"PIP_INDEX_URL": "https://pypi.mirror.test/simple", "https_proxy": "http://proxy.test:3128"},
     {"BASE": "geotm-base:bookworm", "PIP_INDEX_URL": "https://pypi.mirror.test/simple",
      "https_proxy": "http://proxy.test:3128"}),
])
def test_build_args(tmp_path, monkeypatch, certificates, environment, expected):
    for name, text in certificates.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(composerun, "EXTRA_CA_DIR", tmp_path)
    for name in ("PIP_INDEX_URL", *composerun.PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    args = composerun.build_args("geotm-base:bookworm")
    assert args[::2] == ["--build-arg"] * (len(args) // 2)
    assert dict(pair.split("=", 1) for pair in args[1::2]) == expected


def test_every_build_arg_is_declared_in_the_dockerfile():
    dockerfile = (ROOT / "Dockerfile").read_text()
    declared = set(re.findall(r"^ARG (\w+)", dockerfile, flags=re.M))
    assert {"BASE", "EXTRA_CA", "PIP_INDEX_URL"} <= declared   # proxies are Docker's predefined ARGs


def test_base_image_sources():
    assert composerun.sources_list("http://m.test/debian", "http://s.test/debian-security").splitlines() == [
        "deb http://m.test/debian bookworm main",
        "deb http://m.test/debian bookworm-updates main",
        "deb http://s.test/debian-security bookworm-security main"]


def test_the_pulling_daemon_trusts_the_drill_ca_for_the_names_it_pulls():
    """certs.d for the global name and every regional name, each one a replica's certificate carries."""
    trusted = composerun.trusted_hosts()
    assert trusted[0] == f"{REGISTRY}.{ZONE}"
    for replica in REPLICAS:
        assert replica.regional in trusted
        assert set(trusted) & set(pki.replica_names(REGISTRY, ZONE, replica.name)) == {trusted[0], replica.regional}


@pytest.mark.parametrize("short, scenarios, socket, expected", [
    (True, [], "/tmp/x/pull-daemon/docker.sock",
     ["run", "--rm", "-T", "-v", "/tmp/x/pull-daemon/docker.sock:/run/geotm/pull.sock",
      "-e", "GEOTM_PULL_DOCKER=/run/geotm/pull.sock", "client", "drill", "--compose", "--short"]),
    (False, [], None, ["run", "--rm", "-T", "client", "drill", "--compose"]),
    (False, ["blip", "disk-full"], None,
     ["run", "--rm", "-T", "client", "drill", "--compose", "--scenario", "blip", "--scenario", "disk-full"]),
])
def test_the_compose_run(short, scenarios, socket, expected):
    assert composerun.drill_args(short, scenarios, socket) == expected


@pytest.mark.parametrize("root, tools, own_engine, debootstrap, says", [
    (True, "all", True, True, []),
    (False, "all", True, True, ["needs root"]),
    (False, "all", False, False, []),                  # DOCKER_HOST given, --base given
    (True, "no dockerd", True, True, ["missing Debian packages: docker.io"]),
    (True, "no debootstrap", True, True, ["debootstrap missing"]),
    (True, "no debootstrap", True, False, []),
    (True, "no compose", True, True, ["neither `docker compose` nor docker-compose"]),
])
def test_preflight_says_what_is_missing(monkeypatch, root, tools, own_engine, debootstrap, says):
    absent = {"all": set(), "no dockerd": {"dockerd"}, "no debootstrap": {"debootstrap"},
              "no compose": {"docker-compose"}}[tools]
    monkeypatch.setattr(composerun.os, "geteuid", lambda: 0 if root else 1000)
    monkeypatch.setattr(composerun, "docker_cli", lambda: "/usr/bin/docker")
    monkeypatch.setattr(composerun, "compose_cli",
                        lambda docker: None if "docker-compose" in absent else ["docker-compose"])
    monkeypatch.setattr(composerun.shutil, "which",
                        lambda tool, path=None: None if tool in absent else f"/usr/bin/{tool}")
    reasons = composerun.preflight(own_engine, debootstrap)
    assert len(reasons) == len(says)
    for reason, expected in zip(reasons, says):
        assert expected in reason


def test_the_drill_summary_is_what_ci_counts():
    """composerun counts the drill's summary lines into its closing `N passed, N failed` line."""
    passed = Timeline("a", 0.0, name="storage-failure")
    failed = Timeline("b", 0.0, name="dockerd-pull")
    failed.measurements.append(Measurement("x", 20.0, 10.0))
    lines = summary([passed, failed]).splitlines()
    assert [m.group(1) for m in map(composerun.SUMMARY_LINE.match, lines) if m] == ["PASS", "FAIL"]
    assert not composerun.SUMMARY_LINE.match("  result: PASS")


def test_ci_runs_the_short_compose_drill():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/compose-drill --short" in ci
    assert '[ "$compose" = 0 ]' in ci


def test_iptables_lines_split_back_into_arguments():
    line = ('-D POSTROUTING -s 10.199.77.2/32 ! -o gte1h -m comment --comment "geotm-compose-drill gtengine-1" '
            '-j MASQUERADE')
    assert engine._split_rule(line) == ["-D", "POSTROUTING", "-s", "10.199.77.2/32", "!", "-o", "gte1h", "-m",
                                        "comment", "--comment", "geotm-compose-drill gtengine-1", "-j",
                                        "MASQUERADE"]


def test_engine_names_fit_linux_interface_names():
    assert len(f"gte{4_194_304}h") <= 15    # the largest pid_max
