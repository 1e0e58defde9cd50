"""Keeping one key of ours in etcd under a lease: granted, renewed every ttl/3, written again when
what it says changes (and, when asked, every ttl/3 so its timestamps stay fresh); a new lease when
etcd comes back after the old one ended; revoked at a clean stop. A killed process's key goes with
its lease, by itself. Used by probes (verdicts) and dnsd (its registration)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from typing import Callable

import structlog

from dnsd.cluster.etcd import EtcdClient, EtcdRefused, EtcdUnavailable

log = structlog.get_logger(__name__)

PUBLISH_PERIOD = 0.25  # seconds between looks at what the key should say (a change goes out within this)
NOT_IN_ETCD, UNREACHABLE = object(), object()  # what `published` holds when etcd has no current value


class LeasedPublisher:
    """`value()` published under `key` with a lease of `ttl` seconds. `version()` says when the value
    changed (cheaper than building it); `republish`: write again every ttl/3 even when unchanged."""

    what = "key"  # for the log

    def __init__(self, client: EtcdClient, key: str, ttl: float, value: Callable[[], bytes],
                 version: Callable[[], Hashable], republish: bool = False):
        self.client = client
        self.key = key
        self.ttl = ttl
        self.value = value
        self.version = version
        self.republish = republish
        self.lease = 0
        self.published: object = NOT_IN_ETCD  # the version in etcd now

    async def run(self) -> None:
        renewed = written = 0.0
        while True:
            try:
                now = time.monotonic()
                if self.lease and now - renewed >= self.ttl / 3:
                    await self.client.keep_alive(self.lease)
                    renewed = now
                if not self.lease:
                    self.lease, renewed, self.published = await self.client.grant(self.ttl), now, NOT_IN_ETCD
                version = self.version()
                if version != self.published or (self.republish and now - written >= self.ttl / 3):
                    await self.client.put(self.key, self.value(), self.lease)
                    self.published, written = version, now
            except EtcdRefused as err:  # the lease ended (etcd was away longer than the TTL): a new one
                log.warning("cluster_lease_lost", key=self.key, error=str(err))
                self.lease = 0
            except EtcdUnavailable as err:
                if self.published is not UNREACHABLE:
                    log.warning("cluster_not_published", key=self.key, what=self.what, error=str(err),
                                effect="our last value stays in etcd until its lease ends")
                self.published = UNREACHABLE
            await asyncio.sleep(PUBLISH_PERIOD)

    async def withdraw(self) -> None:
        """At a clean stop: our key goes now, not at the lease's end."""
        if self.lease:
            try:
                await self.client.revoke(self.lease)
            except EtcdUnavailable:
                pass
