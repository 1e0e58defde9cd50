"""Probe verdicts through etcd: each probes instance publishes its health document under
verdicts/<instance> with a lease as long as health.ttl, renewed while it runs (a killed instance's
verdicts vanish with the lease, by themselves); each dnsd watches verdicts/ and hands every live
instance's document to its HealthFeed, which combines them with the same quorum rule as polled feeds."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

import structlog

from dnsd.cluster.etcd import EtcdClient, EtcdRefused, EtcdUnavailable, KeyValue, WatchEvent
from dnsd.cluster.follow import PrefixFollower
from dnsd.routing.feed import HealthFeed
from dnsd.routing.health import FeedDocument

log = structlog.get_logger(__name__)

PUBLISH_PERIOD = 0.25  # seconds between looks at the probes' generation (a change goes out within this)


class VerdictFollower(PrefixFollower):
    """dnsd's side: the live probes instances' documents -> feed (recombined after each change)."""

    what = "probe verdicts (aging out through health.ttl)"

    def __init__(self, client: EtcdClient, prefix: str, feed: HealthFeed, clock: Callable[[], float] = time.time):
        super().__init__(client, prefix + "verdicts/", clock)
        self.feed = feed

    def _load(self, kvs: list[KeyValue], revision: int) -> None:
        live = {}
        for kv in kvs:
            document = self._document(kv)
            if document is not None:
                live[kv.key[len(self.keys):]] = document
        for gone in set(self.feed.cluster_feeds) - set(live):
            self.feed.set_cluster_verdicts(gone, None)
        for instance, document in live.items():
            self.feed.set_cluster_verdicts(instance, document)
        self.feed.refresh()

    async def _apply(self, events: list[WatchEvent]) -> None:
        for event in events:
            instance = event.kv.key[len(self.keys):]
            if event.kind == "delete":
                self.feed.set_cluster_verdicts(instance, None)
            else:
                document = self._document(event.kv)
                if document is not None:
                    self.feed.set_cluster_verdicts(instance, document)
        self.feed.refresh()

    def _lost(self) -> None:
        self.feed.cluster_unreachable()

    @staticmethod
    def _document(kv: KeyValue) -> FeedDocument | None:
        try:
            return FeedDocument.from_json(json.loads(kv.value))
        except ValueError as err:
            log.error("cluster_verdicts_unreadable", key=kv.key, error=str(err), effect="ignored")
            return None


class VerdictPublisher:
    """probes' side: `document()` (and `generation()`, which bumps on each change) published under
    verdicts/<instance>, leased for `ttl` seconds and renewed every ttl/3; a new lease after etcd
    comes back (the old one may have ended meanwhile)."""

    def __init__(self, client: EtcdClient, prefix: str, instance: str, ttl: float,
                 document: Callable[[], FeedDocument], generation: Callable[[], int]):
        self.client = client
        self.key = f"{prefix}verdicts/{instance}"
        self.ttl = ttl
        self.document = document
        self.generation = generation
        self.lease = 0
        self.published = -1  # the generation in etcd now

    async def run(self) -> None:
        renewed = 0.0
        while True:
            try:
                now = time.monotonic()
                if self.lease and now - renewed >= self.ttl / 3:
                    await self.client.keep_alive(self.lease)
                    renewed = now
                if not self.lease:
                    self.lease, renewed, self.published = await self.client.grant(self.ttl), now, -1
                generation = self.generation()
                if generation != self.published:
                    await self.client.put(self.key, json.dumps(self.document().to_json()).encode(), self.lease)
                    self.published = generation
            except EtcdRefused as err:  # the lease ended (etcd was away longer than the TTL): a new one
                log.warning("cluster_verdicts_lease_lost", key=self.key, error=str(err))
                self.lease = 0
            except EtcdUnavailable as err:
                if self.published != -2:
                    log.warning("cluster_verdicts_not_published", key=self.key, error=str(err),
                                effect="dnsd ages our last verdicts out through health.ttl")
                self.published = -2
            await asyncio.sleep(PUBLISH_PERIOD)

    async def withdraw(self) -> None:
        """At a clean stop: our verdicts go now, not at the lease's end."""
        if self.lease:
            try:
                await self.client.revoke(self.lease)
            except EtcdUnavailable:
                pass
