"""Each dnsd's registration in etcd: instances/<instance>, leased for cluster.member_ttl (a dnsd that
dies leaves the list when its lease ends) and written again when it changes and every ttl/3. It says
where the instance answers (DNS and admin addresses), which config it runs (digest), its health
generation, its overrides' revision and when it last synced with etcd. MemberFollower keeps every
instance's for `dnsd status`; out_of_step says what makes one differ from the rest."""
from __future__ import annotations

import json
import time
from typing import Callable

import structlog

from dnsd.cluster.etcd import EtcdClient, KeyValue, WatchEvent
from dnsd.cluster.follow import PrefixFollower
from dnsd.cluster.publish import LeasedPublisher

log = structlog.get_logger(__name__)

TIMESTAMPS = ("last_sync", "published_at")  # change every write: not a reason to write by themselves


class MemberPublisher(LeasedPublisher):
    """This dnsd's registration: `document()` (fresh each call) under instances/<instance>."""

    what = "this dnsd's registration"

    def __init__(self, client: EtcdClient, prefix: str, instance: str, ttl: float, document: Callable[[], dict]):
        super().__init__(client, f"{prefix}instances/{instance}", ttl,
                         lambda: json.dumps({**document(), "published_at": time.time()}).encode(),
                         lambda: tuple(sorted((k, str(v)) for k, v in document().items() if k not in TIMESTAMPS)),
                         republish=True)


class MemberFollower(PrefixFollower):
    """Every registered dnsd's document, by instance name (for status; nothing routes on it). `own`:
    this dnsd's document, live; `bound`: seconds a last sync may be old (cluster.member_ttl)."""

    what = "instance registrations"

    def __init__(self, client: EtcdClient, prefix: str, own: Callable[[], dict], bound: float,
                 clock: Callable[[], float] = time.time):
        super().__init__(client, prefix + "instances/", clock)
        self.own = own
        self.bound = bound
        self.members: dict[str, dict] = {}

    def listing(self) -> list[dict]:
        """Every instance (this one from its live state, first), each with `problems`: what puts it out
        of step with this one or with etcd."""
        mine = self.own()
        others = [member for name, member in sorted(self.members.items()) if name != mine["instance"]]
        everyone = [{**mine, "self": True}] + [{**member, "self": False} for member in others]
        newest = max(int(member.get("overrides_changed") or 0) for member in everyone)
        now = self.clock()
        return [{**member, "problems": out_of_step(member, mine["config"], newest, now, self.bound)}
                for member in everyone]

    def _load(self, kvs: list[KeyValue], revision: int) -> None:
        members = {}
        for kv in kvs:
            document = _document(kv)
            if document is not None:
                members[kv.key[len(self.keys):]] = document
        self.members = members

    async def _apply(self, events: list[WatchEvent]) -> None:
        for event in events:
            instance = event.kv.key[len(self.keys):]
            if event.kind == "delete":
                if self.members.pop(instance, None) is not None:
                    log.info("cluster_instance_left", instance=instance, reason="its lease in etcd ended")
            else:
                document = _document(event.kv)
                if document is not None:
                    if instance not in self.members:
                        log.info("cluster_instance_joined", instance=instance, dns=document.get("dns"))
                    self.members[instance] = document


def _document(kv: KeyValue) -> dict | None:
    try:
        document = json.loads(kv.value)
    except ValueError as err:
        log.error("cluster_instance_unreadable", key=kv.key, error=str(err), effect="not listed")
        return None
    return document if isinstance(document, dict) else None


def out_of_step(member: dict, config_digest: str, newest_change: int, now: float, bound: float) -> list[str]:
    """Why one instance differs from this one or lags behind etcd (empty: in step). `newest_change`:
    the newest override change any instance has seen; `bound`: seconds a last sync may be old."""
    problems = []
    if member.get("config") != config_digest:
        problems.append(f"runs config {str(member.get('config'))[:12]}, not {config_digest[:12]} as this one")
    if not member.get("connected"):
        problems.append("not connected to etcd")
    last_sync = member.get("last_sync")
    if last_sync is None:
        problems.append("never synced with etcd")
    elif now - last_sync > bound:
        problems.append(f"last synced {now - last_sync:.0f}s ago (bound {bound:g}s)")
    revision = int(member.get("overrides_revision") or 0)
    if revision < newest_change:
        problems.append(f"overrides at revision {revision}, behind {newest_change}")
    return problems
