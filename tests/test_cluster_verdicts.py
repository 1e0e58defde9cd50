"""Probe verdicts through etcd, with a real dnsd and a real etcd: two probes instances publish under
leases (dnsd.cluster.verdicts.VerdictPublisher, as `probes serve` does with a cluster section); dnsd
combines the live ones with the quorum rule of polled feeds; a killed instance's verdicts vanish with
its lease, and the quorum is then counted over the one left."""
from __future__ import annotations

import asyncio
import time
from types import MappingProxyType

import pytest

from dnsd.cluster.etcd import EtcdClient
from dnsd.cluster.verdicts import VerdictPublisher
from dnsd.routing.health import EndpointHealth, FeedDocument, Status
from tests import harness
from tests.etcdkit import Etcd
from tests.test_cluster_overrides import EASTUS, WESTEUROPE, global_answer, instance_config, metric

TTL = 2.0  # health.ttl: each probes instance's lease


def verdicts(instance: str, westeurope: Status) -> FeedDocument:
    return FeedDocument(instance, 1, time.time(), MappingProxyType({
        ("contoso", "westeurope"): EndpointHealth(westeurope, f"{instance} says so", time.time()),
        ("contoso", "eastus"): EndpointHealth(Status.ONLINE, "ok", time.time())}))


@pytest.fixture
def etcd(tmp_path):
    with Etcd(tmp_path / "etcd") as server:
        yield server


async def answer(process) -> str | None:
    return await asyncio.to_thread(global_answer, process)


async def test_live_probes_vote_and_a_killed_one_takes_its_verdicts_with_it(tmp_path, etcd):
    path = instance_config(tmp_path, "one", etcd)
    path.write_text(path.read_text().replace("health: {}", f"health: {{ttl: {TTL}s}}"))
    with harness.dnsd(path) as process:
        await asyncio.to_thread(harness.wait_until, lambda: metric(process, "geotm_cluster_connected") == 1.0,
                                10, "connected")
        publishers = {}
        tasks = {}
        for name, status in (("probe-a", Status.DEGRADED), ("probe-b", Status.ONLINE)):
            document = verdicts(name, status)
            publishers[name] = VerdictPublisher(EtcdClient(etcd.urls), "/test-geotm/", name, TTL,
                                                lambda d=document: d, lambda: 1)
            tasks[name] = asyncio.create_task(publishers[name].run())
        try:
            # both live: 1 of 2 says degraded, a majority needs 2: westeurope keeps serving
            await harness.wait_until_async(lambda: "probe-a" in process.log_text() and "probe-b" in process.log_text(),
                                           5, "both instances joined")
            assert await answer(process) == WESTEUROPE
            tasks["probe-b"].cancel()  # killed: no revoke, its lease runs out by itself
            started = time.monotonic()
            while await answer(process) != EASTUS:
                assert time.monotonic() - started < TTL + 5, "probe-b's verdicts outlived its lease"
                await asyncio.sleep(0.1)
            took = time.monotonic() - started
            print(f"\nkilled probes instance's verdicts gone after {took:.1f} s (lease {TTL:g} s)")
            assert took >= TTL - 1.0  # it went with the lease, not before
            assert '"health_feed_gone"' in process.log_text()
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            for publisher in publishers.values():
                await publisher.client.close()
