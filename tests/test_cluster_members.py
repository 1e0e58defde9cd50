"""Each dnsd registered in etcd under a lease (dnsd.cluster.members), with real dnsd processes and a real
etcd on loopback: every instance listed by `dnsd status` and /v1/status with its addresses, config,
health generation, overrides revision and last sync; one running another config flagged; one killed
leaves the list when its lease ends. What makes an instance out of step, as a table."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dnsd.cluster.members import out_of_step
from dnsd.config import ConfigError, parse_config_text
from tests import harness
from tests.dnstest import ROOT, example_dict
from tests.etcdkit import Etcd
from tests.test_cluster_overrides import TOKEN, admin

MEMBER_TTL = 2.0
NOW = 1_000_000.0
DIGEST, OTHER = "a" * 64, "b" * 64
IN_STEP = {"config": DIGEST, "connected": True, "last_sync": NOW - 1, "overrides_revision": 40}


@pytest.mark.parametrize("member, newest_change, problems", [
    (IN_STEP, 40, []),
    (IN_STEP, 12, []),  # read at 40, the last change at 12: current
    ({**IN_STEP, "config": OTHER}, 40, ["runs config bbbbbbbbbbbb, not aaaaaaaaaaaa as this one"]),
    ({**IN_STEP, "overrides_revision": 39}, 40, ["overrides at revision 39, behind 40"]),
    ({**IN_STEP, "last_sync": NOW - 11}, 40, ["last synced 11s ago (bound 10s)"]),
    ({**IN_STEP, "last_sync": None, "connected": False}, 0, ["not connected to etcd", "never synced with etcd"]),
])
def test_what_puts_an_instance_out_of_step(member, newest_change, problems):
    assert out_of_step(member, DIGEST, newest_change, NOW, bound=10.0) == problems


def cluster_config(folder: Path, etcd: Etcd, admin_port: int, zone_ttl: int | None = None) -> Path:
    """A config whose text is the same in every folder (relative state files, one admin address that
    `dnsd status --config` uses; the others get --admin-listen): one digest unless zone_ttl differs."""
    folder.mkdir()
    (folder / "token").write_text(TOKEN + "\n")
    data = example_dict()
    data["health"], data["probes"] = {}, {}
    data["admin"] = {"listen": f"127.0.0.1:{admin_port}", "token_file": "token", "state_file": "overrides.json"}
    if zone_ttl is not None:
        data["zone"]["ttl"] = {**data["zone"].get("ttl", {}), "global": zone_ttl}
    data["cluster"] = {"etcd": {"endpoints": etcd.urls, "prefix": "/test-geotm/", "timeout": "1s"},
                       "member_ttl": f"{MEMBER_TTL:g}s"}
    path = folder / "geotm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def instances(process) -> dict[str, dict]:
    status, body = admin(process, "GET", "/v1/status")
    assert status == 200, body
    return {member["dns"][0]: member for member in body["cluster"]["instances"]}


@pytest.fixture
def etcd(tmp_path):
    with Etcd(tmp_path / "etcd") as server:
        yield server


def test_instances_listed_another_config_flagged_a_killed_one_gone_with_its_lease(tmp_path, etcd):
    first_admin = harness.free_port()
    one = cluster_config(tmp_path / "one", etcd, first_admin)
    two = cluster_config(tmp_path / "two", etcd, first_admin)
    assert one.read_text() == two.read_text()
    with harness.dnsd(one, admin_port=first_admin) as first, harness.dnsd(two) as second:
        a, b = f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"
        harness.wait_until(lambda: set(instances(first)) == {a, b} and not any(
            m["problems"] for m in instances(first).values()), 10, "both listed, in step")
        listed = instances(first)
        assert listed[a]["self"] and not listed[b]["self"]
        assert listed[b]["admin"] == f"127.0.0.1:{second.admin_port}"
        assert listed[b]["config_version"] == listed[a]["config_version"]
        assert listed[b]["connected"] and listed[b]["last_sync_age_seconds"] <= MEMBER_TTL
        assert listed[b]["health_generation"] is not None and listed[b]["overrides_revision"] > 0

        second.kill()  # no clean stop: its registration goes only with its lease
        killed = time.monotonic()
        harness.wait_until(lambda: set(instances(first)) == {a}, MEMBER_TTL + 5, "the killed one gone")
        took = time.monotonic() - killed
        print(f"\nkilled dnsd left the list after {took:.1f} s (lease {MEMBER_TTL:g} s)")
        assert took >= MEMBER_TTL - 1.0  # with its lease, not before
        assert '"cluster_instance_left"' in first.log_text()

        other = cluster_config(tmp_path / "other", etcd, first_admin, zone_ttl=120)
        with harness.dnsd(other) as third:
            c = f"127.0.0.1:{third.port}"
            harness.wait_until(lambda: c in instances(first), 10, "the third listed")
            versions = instances(first)[c]["config_version"], instances(first)[a]["config_version"]
            another = [f"runs config {versions[0]}, not {versions[1]} as this one"]
            # while it starts, it may say it is not connected yet: then only the config stays
            harness.wait_until(lambda: instances(first)[c]["problems"] == another, 10, "flagged: another config")
            assert instances(first)[a]["problems"] == []
            cli = subprocess.run([sys.executable, "-m", "dnsd", "status", "--config", str(one)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=30)
            assert cli.returncode == 0, cli.stderr
            assert "cluster: 2 dnsd instances, 1 OUT OF STEP" in cli.stdout
            assert f"dns {c} admin 127.0.0.1:{third.admin_port}" in cli.stdout
            assert "    OUT OF STEP: runs config" in cli.stdout
            print(cli.stdout)


@pytest.mark.parametrize("given, member_ttl", [(None, 10.0), ("3s", 3.0), (30, 30.0)])
def test_member_ttl_from_the_cluster_section_or_the_model(given, member_ttl):
    data = example_dict()
    data["cluster"] = {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}, **({"member_ttl": given} if given else {})}
    assert parse_config_text(yaml.safe_dump(data), "cluster.yaml").cluster.member_ttl == member_ttl


def test_a_member_ttl_under_a_second_is_refused():
    data = example_dict()
    data["cluster"] = {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}, "member_ttl": "0.5s"}
    with pytest.raises(ConfigError, match="cluster.member_ttl"):
        parse_config_text(yaml.safe_dump(data), "cluster.yaml")
