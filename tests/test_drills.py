"""The failover drills: pure parts (timelines and budget verdicts, the OCI layout builder, the
generated configs, the PKI names) and, where this machine allows it, `geotm drill --short` for real
(network namespace, Debian's docker-registry, skopeo, probes and dnsd)."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dnsd.routing.budget import budgets
from dnsd.config import load_config
from drills import image, labconfig, pki
from drills.pulls import Pull, Puller
from drills.dockerapi import demux
from drills.dockerfaults import DockerFaults
from drills.faults import Faults
from drills.labconfig import AGGRESSIVE, DEFAULT, Paths
from drills.localfaults import LocalFaults
from drills.localprocs import LocalProcesses
from drills.observe import Events
from drills.scenarios import _judge_pulls, _old_answer_kept, blip_length
from drills.timeline import Measurement, Timeline, summary
from tests.tools import require_tool, unavailable

ROOT = Path(__file__).resolve().parent.parent


# -- timelines and budgets ------------------------------------------------------------------------

def test_measurement_verdicts():
    assert Measurement("failover", 4.2, 8.6).ok
    assert Measurement("failover", 8.6, 8.6).ok                      # the budget is inclusive
    over = Measurement("failover", 9.1, 8.6)
    assert not over.ok and "OVER BUDGET" in over.render()
    never = Measurement("failover", None, 8.6)
    assert not never.ok and "NOT SEEN" in never.render()
    early = Measurement("fail open", 3.0, 16.0, at_least=9.0)
    assert not early.ok and "TOO EARLY" in early.render()
    assert Measurement("fail open", 10.9, 16.0, at_least=9.0).ok


def test_timeline_orders_marks_and_fails_on_problems_or_budget():
    tl = Timeline("storage-failure", origin=100.0)
    tl.mark(105.3, "first DNS answer changed")
    tl.mark(100.0, "fault injected")
    tl.mark(None, "first successful pull from the new replica")
    tl.measure("failover: DNS answer moved", 100.0, 105.3, 8.6)
    assert tl.passed
    text = tl.render()
    assert text.index("fault injected") < text.index("first DNS answer changed")
    assert "+   5.30s  first DNS answer changed" in text
    assert "not seen: first successful pull" in text
    tl.measure("failover: first pull from new", 100.0, None, 13.6)
    assert not tl.passed and "result: FAIL" in tl.render()
    ok = Timeline("blip", origin=0.0, name="blip")
    ok.problem("the global name moved during a blip")
    assert not ok.passed and "FAIL: the global name moved" in ok.render()
    assert "FAIL  blip" in summary([ok])


def test_budgets_of_the_drill_configs(tmp_path):
    for timing in (DEFAULT, AGGRESSIVE):
        path = tmp_path / f"{timing.name}.yaml"
        path.write_text(yaml.safe_dump(labconfig.geotm_config(timing, Paths(tmp_path))))
        rows = {b.replica: b for b in budgets(load_config(str(path)))}
        assert set(rows) == {"eastus", "westeurope", "southeastasia"}
        b = rows["eastus"]
        assert b.detect_down == pytest.approx(timing.fall * timing.interval * (1 + timing.jitter) + timing.timeout)
        assert b.client_cache == timing.tm_ttl and b.feed == timing.poll_interval
    # the aggressive settings: interval 1 s, fall 3, rise 2, TTL 5 s -> under 10 s end to end
    assert (AGGRESSIVE.interval, AGGRESSIVE.fall, AGGRESSIVE.rise, AGGRESSIVE.tm_ttl) == (1.0, 3, 2, 5)
    path = tmp_path / "aggressive.yaml"
    assert all(b.failover < 10.0 for b in budgets(load_config(str(path))))


def test_the_lab_runs_the_production_shape_two_probes_with_a_majority(tmp_path):
    path = tmp_path / "geotm.yaml"
    path.write_text(yaml.safe_dump(labconfig.geotm_config(DEFAULT, Paths(tmp_path))))
    health = load_config(str(path)).health
    hosts = [feed.split("/")[2].split(":")[0] for feed in health.feeds]
    assert hosts == list(labconfig.PROBES.values()) and len(set(hosts)) == 2
    assert set(hosts) <= set(labconfig.ALL_ADDRESSES)     # both instances have an address in the namespace
    assert health.quorum == 0                              # majority of the instances that answer
    from drills.scenarios import SCENARIOS, SHORT, TWO_PROBES
    assert set(TWO_PROBES) <= set(SCENARIOS) and not set(TWO_PROBES) & set(SHORT)


@pytest.mark.parametrize("timing", [DEFAULT, AGGRESSIVE], ids=lambda t: t.name)
def test_blip_fails_a_round_but_fewer_than_fall(timing):
    length = blip_length(timing.interval, timing.timeout, timing.fall, timing.jitter)
    failing_window = length - timing.timeout      # rounds starting here are still frozen at their timeout
    assert failing_window >= timing.interval * (1 + timing.jitter)   # holds at least one round start
    assert failing_window < (timing.fall - 1) * timing.interval       # fewer than `fall` rounds in a row
    assert length < timing.fall * timing.interval + timing.timeout


class _FakeClient(Puller):
    """Pulls already made (the shared bookkeeping of drills.pulls, without pulling)."""

    def __init__(self, pulls):
        super().__init__()
        self.pulls = list(pulls)


def test_pulls_may_fail_only_inside_the_detection_window():
    pulls = [Pull(99.5, "g", 99.8, True, "eastus"),
             Pull(101.0, "g", 101.2, False, None, "503"),       # after the fault, before DNS moved: excused
             Pull(104.9, "g", 105.6, False, None, "timeout"),   # in flight when DNS moved: excused
             Pull(106.0, "g", 106.2, True, "westeurope")]
    tl = Timeline("t", origin=100.0)
    _judge_pulls(tl, _FakeClient(pulls), 99.0, 110.0, [(100.0, 105.3)])
    assert tl.passed, tl.render()
    assert "2 failed inside the detection window" in tl.render()
    late = Timeline("t", origin=100.0)
    _judge_pulls(late, _FakeClient(pulls + [Pull(107.0, "g", 107.3, False, None, "manifest unknown")]), 99.0, 110.0,
                 [(100.0, 105.3)])
    assert not late.passed and "manifest unknown" in late.render()
    strict = Timeline("t", origin=100.0)
    _judge_pulls(strict, _FakeClient(pulls), 99.0, 110.0, [(100.0, 105.3)], strict=True)
    assert not strict.passed   # disk full / blip: reads keep working, so no failure is excused


@pytest.mark.parametrize("pulls, kept", [
    # (started, ok, replica) after the DNS answer moved at 100.0; the first pull of the new one at 102.0
    ([], 0.0),                                                            # switched at once
    ([(100.5, True, "eastus")], 0.5),                                     # served by the old replica
    ([(100.5, False, None), (101.4, False, None)], 1.4),                  # failed there, twice
    ([(100.5, False, None), (101.0, True, "westeurope")], 0.5),           # mixed: the last old one counts
    ([(99.0, False, None)], 0.0),                                         # before the change: not the client's
])
def test_how_long_a_client_kept_the_old_answer(pulls, kept):
    client = _FakeClient([Pull(s, "g", s + 0.2, ok, replica) for s, ok, replica in pulls])
    first_new = Pull(102.0, "g", 102.3, True, "westeurope")
    assert _old_answer_kept(client, "eastus", 100.0, first_new) == pytest.approx(kept)


@pytest.mark.parametrize("short, compose, daemon, expected", [
    (True, False, False, ["storage-failure", "blip"]),
    (True, True, False, ["storage-failure", "blip"]),
    (True, True, True, ["storage-failure", "blip", "dockerd-pull"]),
    (False, True, True, ["storage-failure", "blip", "disk-full", "process-killed", "process-frozen",
                         "probes-stopped", "drain-during-outage", "dockerd-pull"]),
    (False, False, False, ["storage-failure", "blip", "disk-full", "process-killed", "process-frozen",
                           "probes-stopped", "probes-one-killed", "drain-during-outage"]),
])
def test_which_scenarios_a_run_runs(short, compose, daemon, expected):
    from drills.cli import scenario_names
    assert scenario_names(short, compose, daemon) == expected


# -- the OCI layout builder -----------------------------------------------------------------------

def test_oci_layout_has_valid_digests(tmp_path):
    built = image.build_layout(tmp_path / "img", "1", annotations={image.REPLICA_LABEL: "eastus"})
    layout = tmp_path / "img"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    assert entry["digest"] == built.manifest.digest and entry["annotations"][image.REF_NAME] == "1"
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    manifest = json.loads(image.read_blob(layout, built.manifest.digest, built.manifest.size))
    assert manifest["mediaType"] == image.MANIFEST_TYPE and manifest["schemaVersion"] == 2
    layer = image.read_blob(layout, manifest["layers"][0]["digest"], manifest["layers"][0]["size"])
    assert "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest() == built.diff_id
    config = image.image_config(layout, "1")
    assert config["rootfs"]["diff_ids"] == [built.diff_id]
    pulled_manifest, _ = image.inspect_layout(layout)
    assert image.replica_of(pulled_manifest) == "eastus"


def test_replicas_get_identical_blobs_and_differ_only_in_the_manifest(tmp_path):
    a = image.build_layout(tmp_path / "a", "1", annotations={image.REPLICA_LABEL: "eastus"})
    b = image.build_layout(tmp_path / "b", "1", annotations={image.REPLICA_LABEL: "eastus"})
    c = image.build_layout(tmp_path / "c", "1", annotations={image.REPLICA_LABEL: "westeurope"})
    assert a.manifest.digest == b.manifest.digest                       # deterministic
    # a pull whose DNS answer moves between manifest and blobs still finds the same blobs
    assert (a.layer, a.config) == (c.layer, c.config) and a.manifest.digest != c.manifest.digest


def test_oci_layout_tampering_is_caught(tmp_path):
    built = image.build_layout(tmp_path / "img", "1")
    blob = tmp_path / "img" / "blobs" / "sha256" / built.layer.digest.split(":")[1]
    blob.write_bytes(blob.read_bytes() + b"x")
    with pytest.raises(image.LayoutError, match="does not match its digest"):
        image.image_config(tmp_path / "img")


# -- generated configs ----------------------------------------------------------------------------

@pytest.mark.parametrize("timing", [DEFAULT, AGGRESSIVE], ids=lambda t: t.name)
def test_generated_config_passes_dnsd_check_config(tmp_path, timing):
    path = tmp_path / "geotm.yaml"
    path.write_text(yaml.safe_dump(labconfig.geotm_config(timing, Paths(tmp_path)), sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "dnsd", "check-config", str(path)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_config(str(path))
    assert labconfig.DNS_ADDRESS in str(config.server.listen)
    assert {r.name for r in config.registries[0].replicas} == {r.name for r in labconfig.REPLICAS}


def test_registry_config_enables_storage_health_and_debug(tmp_path):
    paths = Paths(tmp_path)
    replica = labconfig.REPLICAS[0]
    config = labconfig.registry_config(replica, paths)
    assert config["health"]["storagedriver"]["enabled"] is True
    assert config["http"]["debug"]["addr"] == f"{replica.address}:{labconfig.DEBUG_PORT}"
    assert config["http"]["addr"] == f"{replica.address}:443"
    assert config["storage"]["delete"]["enabled"] is True   # the write canary deletes its blob
    root = Path(config["storage"]["filesystem"]["rootdirectory"])
    assert root.parent == paths.storage(replica.name)        # unreadable mount point -> health check fails


def test_certificate_names_cover_every_name_a_client_uses():
    names = pki.replica_names("contoso", "azurecr.test", "eastus")
    assert names == ("contoso.azurecr.test", "contoso.eastus.geo.azurecr.test", "contoso.eastus.data.azurecr.test",
                     "contoso.eastus.reg.azurecr.test")
    assert pki.san_extension(names[:1], ("10.77.0.11",)) == "subjectAltName=DNS:contoso.azurecr.test,IP:10.77.0.11"


def test_pki_makes_certificates_the_ca_verifies(tmp_path):
    require_tool("openssl", "to make and verify the drill's certificates")
    ca = pki.make_ca(tmp_path)
    cert = pki.make_server_cert(tmp_path, "eastus", ca, pki.replica_names("contoso", "azurecr.test", "eastus"),
                                ("10.77.0.11",))
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(ca[0]), str(cert.cert)], capture_output=True,
                            text=True, timeout=30)
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(cert.cert), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, timeout=30).stdout
    assert "DNS:contoso.azurecr.test" in text and "IP Address:10.77.0.11" in text


def test_pki_command_writes_what_the_compose_stack_mounts(tmp_path):
    require_tool("openssl", "to make the compose stack's certificates")
    out = tmp_path / "pki"
    assert pki.main(["--out", str(out)]) == 0
    for name in ("ca.crt", "client/ca.crt", "admin-token", "eastus.crt", "eastus.key", "westeurope.key",
                 "southeastasia.crt"):
        assert (out / name).is_file(), name
    assert list((out / "client").iterdir()) == [out / "client" / "ca.crt"]   # a trust dir without stray keys
    before = (out / "ca.crt").read_bytes()
    assert pki.main(["--out", str(out)]) == 0 and (out / "ca.crt").read_bytes() == before   # kept


def test_both_labs_implement_every_fault(tmp_path):
    """Faults is an ABC: a lab missing one of its operations could not be built at all."""
    for faults in (LocalFaults(LocalProcesses(Paths(tmp_path), Events())), DockerFaults(None, {}, None)):
        assert isinstance(faults, Faults)
        assert not getattr(type(faults), "__abstractmethods__", None)


GENERATED_NAME_IN_AN_F_STRING = re.compile(r"\}\.(geo|data|reg|tm|privatelink)\.|\.(geo|data|reg|tm|privatelink)\.\{")


def test_drills_read_configs_and_build_names_through_dnsd():
    """One owner for each fact: drills read a geotm config only with dnsd.config.load_config (they write
    YAML, never parse it) and take every generated name from dnsd.names."""
    for path in sorted((ROOT / "drills").glob("*.py")):
        text = path.read_text()
        assert "safe_load" not in text and "yaml.load" not in text, path.name
        assert not GENERATED_NAME_IN_AN_F_STRING.search(text), path.name
    assert labconfig.REPLICA["eastus"].regional == "contoso.eastus.geo.azurecr.test"
    assert labconfig.GLOBAL_NAME == "contoso.azurecr.test"


def test_docker_stream_demux():
    frames = b"\x01\x00\x00\x00\x00\x00\x00\x03abc" + b"\x02\x00\x00\x00\x00\x00\x00\x02de" + b"\x01\x00\x00"
    parsed, rest = demux(frames)
    assert parsed == [(1, b"abc"), (2, b"de")] and rest == b"\x01\x00\x00"


# -- the real drill -------------------------------------------------------------------------------

def _cannot_run() -> list[str]:
    from drills.cli import preflight
    return preflight()


@pytest.mark.slow
def test_geotm_drill_short_runs_for_real():
    """The CI drill: storage failure + blip with real registries, probes, dnsd and skopeo. Skipped with
    the reason when this machine cannot create network namespaces or lacks the Debian packages; fails
    for that reason under GEOTM_REQUIRE_TOOLS=1 (CI)."""
    reasons = _cannot_run()
    if reasons:
        unavailable("geotm drill --short cannot run here: " + "; ".join(reasons))
    result = subprocess.run([sys.executable, "-m", "drills", "drill", "--short"], capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, output[-6000:]
    assert "geotm drill PASSED" in output
    for scenario in ("storage-failure", "blip"):
        assert f"PASS  {scenario}" in output
    assert "first DNS answer changed" in output and "first successful pull from the new replica" in output


def test_preflight_says_what_is_missing(monkeypatch):
    from drills import cli
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    real_which = shutil.which
    monkeypatch.setattr(cli.shutil, "which", lambda tool: None if tool in ("skopeo", "docker-registry")
                        else real_which(tool))
    reasons = cli.preflight()
    assert any("needs root" in r for r in reasons)
    assert any("apt-get install -y docker-registry skopeo" in r for r in reasons), reasons


def test_compose_lab_makes_faults_through_the_docker_engine(tmp_path):
    """The compose drill's fault injection, against a fake engine (no Docker runs here)."""
    from drills.compose import ComposeLab
    from drills.dockerfaults import STORAGE

    class FakeDocker:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            def call(*args, **kwargs):
                self.calls.append((name, *args))
                return (0, "") if name == "exec" else {"Running": True} if name == "state" else None
            return call

    fake = FakeDocker()
    stack = ComposeLab(tmp_path, say=lambda _text: None, docker=fake)
    stack.containers.update({name: f"id-{name}" for name in ("eastus", "westeurope", "southeastasia", "probes",
                                                             "dnsd")})
    assert stack.client.prefix == []
    faults = stack.faults
    faults.freeze("eastus")
    assert faults.frozen == {"eastus"}
    faults.thaw("eastus")
    faults.kill_registry("westeurope")
    faults.storage_unreadable("eastus")
    faults.fill_disk("eastus")
    faults.stop_probes()
    assert ("pause", "id-eastus") in fake.calls and ("unpause", "id-eastus") in fake.calls
    assert ("kill", "id-westeurope") in fake.calls and ("stop", "id-probes") in fake.calls
    assert ("exec", "id-eastus", ["chmod", "000", str(STORAGE)]) in fake.calls
    assert any(c[0] == "exec" and c[2][0] == "dd" and c[2][2] == f"of={STORAGE / 'filler'}" for c in fake.calls)
