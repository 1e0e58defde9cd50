"""The etcd client (dnsd.cluster.etcd) against a real etcd on loopback: keys, transactions, leases
that take their keys with them, prefix watches, and the error a caller gets when etcd is gone."""
from __future__ import annotations

import asyncio

import pytest

from dnsd.cluster.etcd import EtcdClient, EtcdUnavailable, absent, prefix_end, put_op
from tests.etcdkit import Etcd


@pytest.fixture
def etcd(tmp_path):
    with Etcd(tmp_path / "etcd") as server:
        yield server


@pytest.mark.parametrize("prefix, end", [
    ("/geotm/", "L2dlb3RtMA=="),  # "/geotm0": '/' + 1
    ("a", "Yg=="),  # "b"
    ("", "AA=="),  # every key
])
def test_prefix_end(prefix, end):
    assert prefix_end(prefix) == end


async def test_keys_transactions_and_leases(etcd):
    client = EtcdClient(etcd.urls)
    try:
        await client.put("/t/a", b"1")
        assert await client.txn([put_op("/t/b", b"2")], compare=[absent("/t/b")])
        assert not await client.txn([put_op("/t/b", b"3")], compare=[absent("/t/b")])  # b exists: no change
        lease = await client.grant(1)
        await client.put("/t/leased", b"x", lease=lease)
        kvs, revision = await client.get_prefix("/t/")
        assert {kv.key: kv.value for kv in kvs} == {"/t/a": b"1", "/t/b": b"2", "/t/leased": b"x"}
        assert revision >= 4
        await client.revoke(lease)
        assert await client.delete("/t/a") == 1
        kvs, _ = await client.get_prefix("/t/")
        assert [kv.key for kv in kvs] == ["/t/b"]
    finally:
        await client.close()


async def test_watch_sees_puts_and_deletes_from_a_revision(etcd):
    client = EtcdClient(etcd.urls)
    try:
        _, revision = await client.get_prefix("/w/")
        seen: list[tuple[str, str, bytes]] = []

        async def watch():
            async for events in client.watch_prefix("/w/", revision + 1):
                seen.extend((e.kind, e.kv.key, e.previous.value if e.previous else e.kv.value) for e in events)
                if len(seen) == 2:
                    return

        watcher = asyncio.create_task(watch())
        await client.put("/w/x", b"on")
        await client.put("/other", b"ignored")
        await client.delete("/w/x")
        await asyncio.wait_for(watcher, 5)
        assert seen == [("put", "/w/x", b"on"), ("delete", "/w/x", b"on")]  # a delete carries what went
    finally:
        await client.close()


async def test_lease_expiry_deletes_its_keys_by_itself(etcd):
    client = EtcdClient(etcd.urls)
    try:
        lease = await client.grant(1)
        await client.put("/l/k", b"v", lease=lease)
        assert await client.keep_alive(lease) >= 1
        for _ in range(60):
            if not (await client.get_prefix("/l/"))[0]:
                break
            await asyncio.sleep(0.1)
        assert (await client.get_prefix("/l/"))[0] == []
    finally:
        await client.close()


async def test_unreachable_etcd_is_one_clear_error(etcd):
    client = EtcdClient(etcd.urls, timeout=1.0)
    try:
        await client.put("/u/k", b"v")
        etcd.stop()
        with pytest.raises(EtcdUnavailable, match="127.0.0.1"):
            await client.put("/u/k", b"w")
    finally:
        await client.close()
