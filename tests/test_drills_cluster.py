"""The cluster drill (drills.clusterdrill): its config passes dnsd's own validation, the cut is made
both ways, and (slow, as root with etcd, docker-registry and skopeo) every scenario runs for real."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dnsd.config import load_config
from drills.clusterdrill import victim_link_address
from drills.clusterlab import DNSD, ETCD_ADDRESSES, cluster_config
from drills.labconfig import DEFAULT, Paths
from tests.dnstest import ROOT
from tests.tools import unavailable


def test_every_dnsd_gets_one_config_with_the_cluster_and_no_polled_feeds(tmp_path):
    import yaml
    urls = [f"http://{address}:2379" for address in ETCD_ADDRESSES]
    path = tmp_path / "dnsd-2" / "geotm.yaml"  # each dnsd's copy: relative state files land beside it
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(cluster_config(DEFAULT, Paths(tmp_path), urls)))
    config = load_config(str(path))
    assert config.cluster is not None and list(config.cluster.etcd.endpoints) == urls
    assert config.health.feeds == () and config.health.state_file == str(path.parent / "dnsd-health.json")
    assert config.admin.state_file == str(path.parent / "dnsd-overrides.json")


@pytest.mark.parametrize("spec, link", [(DNSD[1], "10.77.2.2"), (DNSD[2], "10.77.3.2")])
def test_a_namespaced_dnsd_reaches_etcd_from_its_end_of_the_veth_pair(spec, link):
    assert victim_link_address(spec) == link


@pytest.mark.slow
def test_the_cluster_drill_runs_for_real():
    from drills.cli import preflight
    reasons = preflight()
    if reasons:
        unavailable("the cluster drill cannot run here: " + "; ".join(reasons))
    result = subprocess.run([sys.executable, "-m", "drills.clusterdrill"], capture_output=True, text=True,
                            timeout=900, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, output[-6000:]
    for scenario in ("drain-everywhere", "leader-killed", "cut-off", "probes-killed", "etcd-down"):
        assert f"PASS  {scenario}" in output
    assert output.count(", 0 unanswered") == 5
