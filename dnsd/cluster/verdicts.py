"""Probe verdicts through etcd: each probes instance publishes its health document under
verdicts/<instance> with a lease as long as health.ttl, renewed while it runs (a killed instance's
verdicts vanish with the lease, by themselves); each dnsd watches verdicts/ and hands every live
instance's document to its HealthFeed, which combines them with the same quorum rule as polled feeds."""
from __future__ import annotations

import json
import time
from typing import Callable

import structlog

from dnsd.cluster.etcd import EtcdClient, KeyValue, WatchEvent
from dnsd.cluster.follow import PrefixFollower
from dnsd.cluster.publish import LeasedPublisher
from dnsd.routing.feed import HealthFeed
from dnsd.routing.health import FeedDocument

log = structlog.get_logger(__name__)

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
        self.feed.save_state(force=True)  # a restart that cannot reach etcd starts from these

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
        await self.feed.save_state_off_loop(force=True)  # the fsync in a thread: answering goes on

    def _lost(self) -> None:
        self.feed.cluster_unreachable()

    @staticmethod
    def _document(kv: KeyValue) -> FeedDocument | None:
        try:
            return FeedDocument.from_json(json.loads(kv.value))
        except ValueError as err:
            log.error("cluster_verdicts_unreadable", key=kv.key, error=str(err), effect="ignored")
            return None


class VerdictPublisher(LeasedPublisher):
    """probes' side: `document()` (and `generation()`, which bumps on each change) published under
    verdicts/<instance>, leased for `ttl` seconds (health.ttl)."""

    what = "probe verdicts (dnsd ages our last ones out through health.ttl)"

    def __init__(self, client: EtcdClient, prefix: str, instance: str, ttl: float,
                 document: Callable[[], FeedDocument], generation: Callable[[], int]):
        super().__init__(client, f"{prefix}verdicts/{instance}", ttl,
                         lambda: json.dumps(document().to_json()).encode(), generation)
