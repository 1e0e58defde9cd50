"""Overrides shared through etcd, with real dnsd processes and a real etcd on loopback: a drain through
one instance's admin API reaches the other through its watch (measured, < 1 s); an expiry is an etcd
lease that ends with no dnsd up; etcd gone: answers go on from the last state, geotm_cluster_connected
0, a drain is refused with a clear error (API and CLI); a restart without etcd starts from the local
state file; etcd back: every instance converges to its state."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from dnsd.cluster.etcd import EtcdClient
from tests import harness
from tests.dnstest import ROOT, example_dict
from tests.etcdkit import Etcd

TOKEN = "cluster-test-token"
WESTEUROPE_CLIENT = "198.51.100.0/24"  # ECS of a client network in westeurope (example config)
WESTEUROPE, EASTUS = "127.0.0.12", "127.0.0.11"  # contoso's replica addresses there


def instance_config(tmp_path: Path, name: str, etcd: Etcd) -> Path:
    """One dnsd's config: the example's zone and registries, no probes, an admin token, its own state
    file, and the shared cluster section."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "token").write_text(TOKEN + "\n")
    data = example_dict()
    data["health"], data["probes"] = {}, {}
    data["admin"] = {"listen": f"127.0.0.1:{harness.free_port()}", "token_file": str(folder / "token"),
                     "state_file": str(folder / "overrides.json")}
    data["cluster"] = {"etcd": {"endpoints": etcd.urls, "prefix": "/test-geotm/", "timeout": "1s"}}
    path = folder / "geotm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def instance(path: Path):
    """dnsd with the config's admin port (where `dnsd drain --config` finds it)."""
    return harness.dnsd(path, admin_port=int(yaml.safe_load(path.read_text())["admin"]["listen"].rsplit(":", 1)[1]))


def admin(process, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{process.admin_port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {TOKEN}", "X-Geotm-Actor": "ops",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text.startswith("{") else {"text": text}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def metric(process, name: str) -> float | None:
    _, body = admin(process, "GET", "/metrics")
    for line in body["text"].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def global_answer(process) -> str | None:
    try:
        return harness_address(process.port)
    except Exception:
        return None


def harness_address(port: int) -> str:
    import dns.query
    from tests.dnstest import make_query
    reply = dns.query.udp(make_query("contoso.azurecr.test", "A", ecs=WESTEUROPE_CLIENT), "127.0.0.1",
                          port=port, timeout=1)
    return reply.answer[-1][0].address


def drain(process, duration: str | None = None) -> tuple[int, dict]:
    body = {"registry": "contoso", "replica": "westeurope", "kind": "drain", "reason": "migration"}
    if duration:
        body["duration"] = duration
    return admin(process, "POST", "/v1/overrides", body)


def etcd_keys(etcd: Etcd, prefix: str) -> list[str]:
    async def read():
        client = EtcdClient(etcd.urls)
        try:
            return [kv.key for kv in (await client.get_prefix(prefix))[0]]
        finally:
            await client.close()
    return asyncio.run(read())


@pytest.fixture
def etcd(tmp_path):
    with Etcd(tmp_path / "etcd") as server:
        yield server


def test_a_drain_through_one_instance_reaches_the_other_within_a_second(tmp_path, etcd):
    one, two = instance_config(tmp_path, "one", etcd), instance_config(tmp_path, "two", etcd)
    with instance(one) as first, instance(two) as second:
        harness.wait_until(lambda: metric(second, "geotm_cluster_connected") == 1.0, 10, "second connected")
        assert global_answer(second) == WESTEUROPE
        status, body = drain(first)
        returned = time.monotonic()
        assert status == 201, body
        assert global_answer(first) == EASTUS  # the instance asked answers the new way at once
        harness.wait_until(lambda: global_answer(second) == EASTUS, 1.0, "the drain answered by instance 2")
        took = time.monotonic() - returned
        print(f"\ndrain propagation: {took * 1000:.0f} ms from the API call returning to instance 2 answering")
        assert took < 1.0
        assert 'etcd: drain contoso/westeurope by ops@127.0.0.1: migration' in second.log_text()

        status, body = admin(second, "DELETE", "/v1/overrides/contoso/westeurope?kind=drain")
        assert status == 200, body
        harness.wait_until(lambda: global_answer(first) == WESTEUROPE, 1.0, "the undrain seen by instance 1")
        _, audit = admin(first, "GET", "/v1/audit")
        assert [(e["action"], e["kind"]) for e in audit["entries"]] == [("set", "drain"), ("undo", "drain")]


def test_an_expiry_is_a_lease_that_ends_with_no_dnsd_up(tmp_path, etcd):
    one = instance_config(tmp_path, "one", etcd)
    with instance(one) as first:
        harness.wait_until(lambda: metric(first, "geotm_cluster_connected") == 1.0, 10, "connected")
        assert drain(first, "2s")[0] == 201
    assert etcd_keys(etcd, "/test-geotm/overrides/") == ["/test-geotm/overrides/contoso/westeurope"]
    harness.wait_until(lambda: not etcd_keys(etcd, "/test-geotm/overrides/"), 10, "the lease's end")


def test_without_etcd_answers_go_on_changes_are_refused_and_a_restart_converges(tmp_path, etcd):
    one, two = instance_config(tmp_path, "one", etcd), instance_config(tmp_path, "two", etcd)
    with instance(one) as first, instance(two) as second:
        harness.wait_until(lambda: metric(second, "geotm_cluster_connected") == 1.0, 10, "connected")
        assert drain(first)[0] == 201
        harness.wait_until(lambda: global_answer(second) == EASTUS, 1.0, "drain seen by instance 2")

        etcd.stop()
        harness.wait_until(lambda: metric(second, "geotm_cluster_connected") == 0.0, 10, "metric 0")
        assert global_answer(second) == EASTUS and global_answer(first) == EASTUS  # the last known state
        status, body = admin(first, "DELETE", "/v1/overrides/contoso/westeurope")
        assert status == 503 and "NOT done: the cluster's etcd cannot take it now" in body["error"], body
        assert global_answer(first) == EASTUS  # nothing changed locally either
        cli = subprocess.run([sys.executable, "-m", "dnsd", "drain", "contoso", "eastus", "--config", str(one),
                              "--reason", "test"], capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert cli.returncode == 1 and "HTTP 503" in cli.stderr and "NOT done" in cli.stderr, cli.stderr

        second.stop()
        second.reset()
        second.start()  # etcd still down: from its local state file
        assert global_answer(second) == EASTUS

        etcd.start()
        asyncio.run(_undrain_directly(etcd))  # a change made while both were cut off
        harness.wait_until(lambda: global_answer(second) == WESTEUROPE, 10, "instance 2 converged")
        harness.wait_until(lambda: global_answer(first) == WESTEUROPE, 10, "instance 1 converged")
        assert metric(first, "geotm_cluster_connected") == 1.0
        log = second.log_text()  # by the full read after reconnecting, or by the watch when it was back first
        assert "converged to etcd's overrides" in log or "etcd: undo drain contoso/westeurope" in log


async def _undrain_directly(etcd: Etcd) -> None:
    client = EtcdClient(etcd.urls)
    try:
        await client.delete("/test-geotm/overrides/contoso/westeurope")
    finally:
        await client.close()
