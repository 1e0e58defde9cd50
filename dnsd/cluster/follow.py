"""Following one etcd key prefix: read it whole, then watch it from that revision (no polling); a
heartbeat ends a watch that a cut network keeps silent; on any failure mark disconnected, keep the
last state, and start again with a full read (which converges to whatever changed meanwhile)."""
from __future__ import annotations

import asyncio
import time
from typing import Callable

import structlog

from dnsd.cluster.etcd import EtcdClient, EtcdRefused, EtcdUnavailable, KeyValue, WatchEvent

log = structlog.get_logger(__name__)

HEARTBEAT = 1.0  # seconds between checks that the etcd member we talk to still has a leader
RETRY_FIRST, RETRY_MAX = 0.2, 3.0  # reconnect backoff (seconds), doubled per failure


class PrefixFollower:
    """A subclass says what a full read (_load) and a watch batch (_apply) mean, and what losing etcd
    means (_lost: nothing by default, the last state stays)."""

    what = "keys"  # for the log: what this follower keeps

    def __init__(self, client: EtcdClient, keys: str, clock: Callable[[], float] = time.time):
        self.client = client
        self.keys = keys
        self.clock = clock
        self.connected = False
        self.last_sync: float | None = None  # when etcd's state was last taken (a read or a watch batch)
        self.revision = 0  # etcd's revision of the state taken

    def _load(self, kvs: list[KeyValue], revision: int) -> None:
        raise NotImplementedError

    async def _apply(self, events: list[WatchEvent]) -> None:
        raise NotImplementedError

    def _lost(self) -> None:
        """etcd became unreachable (called once per outage)."""

    async def run(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                await self._follow()
            except (EtcdUnavailable, EtcdRefused) as err:
                if self.connected:
                    log.warning("cluster_disconnected", keys=self.keys, error=str(err),
                                effect=f"serving the last known {self.what}; override changes are refused")
                    self._lost()
                self._set_connected(False)
            await asyncio.sleep(delay)
            delay = RETRY_FIRST if self.connected else min(delay * 2, RETRY_MAX)

    async def _follow(self) -> None:
        kvs, revision = await self.client.get_prefix(self.keys)
        self.revision, self.last_sync = revision, self.clock()
        self._load(kvs, revision)
        self._set_connected(True)
        watch = asyncio.ensure_future(self._watch(revision + 1))
        beat = asyncio.ensure_future(self._heartbeat())
        try:
            done, _ = await asyncio.wait({watch, beat}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended it
            raise EtcdUnavailable("watch ended")
        finally:
            for task in (watch, beat):
                task.cancel()
            await asyncio.gather(watch, beat, return_exceptions=True)

    async def _watch(self, start: int) -> None:
        async for events in self.client.watch_prefix(self.keys, start):
            if events:
                await self._apply(events)
                self.revision = max(self.revision, *(event.kv.mod_revision for event in events))
            self.last_sync = self.clock()

    async def _heartbeat(self) -> None:
        """A watch through a cut network hears nothing, like a quiet one: ask the member every second
        whether it still reaches a leader, and end the watch when it does not (twice in a row)."""
        misses = 0
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                status = await self.client.status()
                ok = int(status.get("leader", 0)) != 0
            except EtcdUnavailable:
                ok = False
            misses = 0 if ok else misses + 1
            if misses >= 2:
                raise EtcdUnavailable("etcd member unreachable or without a leader")

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            log.info("cluster_connected" if connected else "cluster_not_connected", keys=self.keys,
                     endpoints=self.client.endpoints)
