"""Overrides and their audit log in etcd (the OverrideBackend of a cluster): a change is one etcd
transaction (the override under its key, with a lease when it expires, and its audit entry); every
dnsd follows the prefix through one watch, mirrors it into its local store (the state file a restart
without etcd starts from) and has Dnsd apply it. etcd unreachable: the last known state stays,
`connected` is False, and every write is refused.

Keys under the deployment's prefix:
    overrides/<registry>/<replica>   JSON of an Override; leased until expires_at when it has one
    audit/<ns since epoch>-<instance> JSON audit entry (as the local JSONL log's)"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Callable

import structlog

from dnsd.cluster.etcd import EtcdClient, EtcdRefused, EtcdUnavailable, KeyValue, WatchEvent, absent, delete_op, put_op
from dnsd.cluster.follow import PrefixFollower
from dnsd.routing.overrides import KINDS, Override, OverrideStore

log = structlog.get_logger(__name__)



class SharedOverrides(PrefixFollower):
    """The cluster's overrides for one dnsd. `on_change(why)` runs after each change mirrored into
    `local` (Dnsd applies it)."""

    what = "overrides"

    def __init__(self, client: EtcdClient, prefix: str, local: OverrideStore, instance: str,
                 on_change: Callable[[str], None], clock: Callable[[], float] = time.time):
        super().__init__(client, prefix + "overrides/", clock)
        self.prefix = prefix
        self.local = local
        self.instance = instance
        self.on_change = on_change

    # -- writes ----------------------------------------------------------------------------------

    async def publish(self, override: Override) -> None:
        key = self._key(override.registry, override.replica)
        lease = 0
        if override.expires_at is not None:  # etcd ends it even when no dnsd is up at the time
            lease = await self.client.grant(override.expires_at - self.clock())
        entry = {"registry": override.registry, "replica": override.replica, "kind": override.kind,
                 "reason": override.reason, "expires_at": override.expires_at}
        await self.client.txn([put_op(key, json.dumps(asdict(override)).encode(), lease),
                               self._audit_op("set", override.actor, entry)])
        self._mirror_one(override.registry, override.replica, override)

    async def withdraw(self, override: Override, actor: str, reason: str) -> bool:
        key = self._key(override.registry, override.replica)
        entry = {"registry": override.registry, "replica": override.replica, "kind": override.kind, "reason": reason}
        exists = {**absent(key), "result": "GREATER"}  # created, not deleted since
        done = await self.client.txn([delete_op(key), self._audit_op("undo", actor, entry)], compare=[exists])
        self._mirror_one(override.registry, override.replica, None)
        return done

    async def read_audit(self, limit: int) -> list[dict]:
        kvs, _ = await self.client.get_prefix(self.prefix + "audit/")
        entries = []
        for kv in kvs[-limit:]:
            try:
                entries.append(json.loads(kv.value))
            except ValueError:
                continue
        return entries

    def _audit_op(self, action: str, actor: str, detail: dict) -> dict:
        now = self.clock()
        entry = {"at": now, "action": action, "actor": actor, "instance": self.instance, **detail}
        log.info("audit", **{k: v for k, v in entry.items() if k != "at"})
        return put_op(f"{self.prefix}audit/{int(now * 1e9):020d}-{self.instance}", json.dumps(entry).encode())

    def _key(self, registry: str, replica: str) -> str:
        return f"{self.keys}{registry}/{replica}"

    def _mirror_one(self, registry: str, replica: str, override: Override | None) -> None:
        """Our own acknowledged change, applied here at once (the watch brings it again: no change)."""
        state = dict(self.local.current())
        if override is None:
            state.pop((registry, replica), None)
        else:
            state[(registry, replica)] = override
        self.local.mirror(state)

    # -- following (PrefixFollower) -------------------------------------------------------------

    def _load(self, kvs: list[KeyValue], revision: int) -> None:
        state = {}
        for kv in kvs:
            override = _override(kv)
            if override is not None:
                state[(override.registry, override.replica)] = override
        if self.local.mirror(state):
            self.on_change(f"converged to etcd's overrides (revision {revision})")

    async def _apply(self, events: list[WatchEvent]) -> None:
        state = dict(self.local.current())
        whys = []
        for event in events:
            name = event.kv.key[len(self.keys):]
            registry, _, replica = name.partition("/")
            if event.kind == "put":
                override = _override(event.kv)
                if override is None:
                    continue
                state[(registry, replica)] = override
                whys.append(f"{override.kind} {registry}/{replica} by {override.actor}: "
                            f"{override.reason or 'no reason given'}")
            else:
                state.pop((registry, replica), None)
                before = _override(event.previous) if event.previous else None
                if before is not None and before.expires_at is not None and before.expires_at <= self.clock() + 1:
                    whys.append(f"expired {before.kind} {registry}/{replica}")
                    await self._audit_expiry(before)
                else:
                    whys.append(f"undo {before.kind if before else 'override'} {registry}/{replica}")
        if whys and self.local.mirror(state):
            self.on_change("etcd: " + "; ".join(whys))

    async def _audit_expiry(self, override: Override) -> None:
        """One audit entry per expiry, whichever dnsd sees it first (created only if absent)."""
        key = (f"{self.prefix}audit/{int((override.expires_at or 0) * 1e9):020d}-expired-"
               f"{override.registry}-{override.replica}")
        entry = {"at": override.expires_at, "action": "expired", "actor": "geotm", "instance": self.instance,
                 "registry": override.registry, "replica": override.replica, "kind": override.kind,
                 "reason": override.reason}
        try:
            await self.client.txn([put_op(key, json.dumps(entry).encode())], compare=[absent(key)])
        except (EtcdUnavailable, EtcdRefused) as err:
            log.warning("cluster_audit_failed", action="expired", error=str(err))


def _override(kv: KeyValue) -> Override | None:
    try:
        override = Override(**json.loads(kv.value))
    except (ValueError, TypeError) as err:
        log.error("cluster_override_unreadable", key=kv.key, error=str(err), effect="ignored")
        return None
    return override if override.kind in KINDS else None
