"""A real etcd for tests (drills.etcdlocal): one member (or a few) on loopback ports, its data in a
folder the test owns, stopped by PID. Skips (fails under GEOTM_REQUIRE_TOOLS=1) when etcd or etcdctl
is not installed."""
from __future__ import annotations

from pathlib import Path

from drills import etcdlocal
from drills.etcdlocal import EtcdPki
from tests.tools import require_tool

__all__ = ["Etcd", "EtcdPki", "etcd_binary"]


def etcd_binary() -> str:
    return require_tool("etcd", "as the cluster store of many dnsd and probes instances", "etcd-server")


class Etcd(etcdlocal.Etcd):
    def __init__(self, data_dir: Path, members: int = 1, pki: EtcdPki | None = None):
        super().__init__(etcd_binary(), data_dir, members, pki,
                         etcdctl=require_tool("etcdctl", "to set etcd up for tests", "etcd-client"))
