"""Operator overrides of global routing (drain, force up, force down), with expiry, reasons and an
audit log; persisted so they survive restarts. Pure data, the backend interface every store offers
(OverrideBackend), and the local-file store; the etcd one is dnsd.cluster.overrides."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Protocol

import structlog

from dnsd.common.files import write_json_atomically

log = structlog.get_logger(__name__)

DRAIN, FORCE_UP, FORCE_DOWN = "drain", "force_up", "force_down"
KINDS = (DRAIN, FORCE_UP, FORCE_DOWN)
STATE_FORMAT = "geotm-overrides/1"


@dataclass(frozen=True, slots=True)
class Override:
    registry: str
    replica: str
    kind: str  # drain: out of the global name (regional/data names keep answering);
    # force_up / force_down: status regardless of what probes say
    reason: str
    actor: str
    created_at: float
    expires_at: float | None  # None: until undone

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def describe(self, now: float | None = None) -> str:
        until = ""
        if self.expires_at is not None:
            left = self.expires_at - (now if now is not None else time.time())
            until = f", {max(0, int(left))}s left"
        return f"{self.kind} by {self.actor} ({self.reason or 'no reason given'}{until})"


Overrides = Mapping[tuple[str, str], Override]
NO_OVERRIDES: Overrides = MappingProxyType({})


class OverrideBackend(Protocol):
    """Where an override change is kept before it is acknowledged: this machine's files
    (OverrideStore) or the cluster's etcd (dnsd.cluster.overrides.SharedOverrides). A change the
    backend cannot keep raises (the caller refuses it: never a change kept only here)."""

    async def publish(self, override: Override) -> None:
        """Set (or replace) the replica's override, with its audit entry."""

    async def withdraw(self, override: Override, actor: str, reason: str) -> bool:
        """Remove this override, with its audit entry: False when it was already gone."""

    async def read_audit(self, limit: int) -> list[dict]:
        """The last `limit` audit entries, oldest first."""


class OverrideStore:
    """The live overrides (one per replica at most) and the audit trail. Every change is persisted
    before it is acknowledged, so an acknowledged change survives a crash."""

    def __init__(self, state_file: str | None, audit_file: str | None, clock: Callable[[], float] = time.time):
        self.state_file = state_file
        self.audit_file = audit_file
        self.clock = clock
        self._overrides: dict[tuple[str, str], Override] = {}
        self._loaded_mtime: float | None = None

    def current(self) -> Overrides:
        return MappingProxyType(dict(self._overrides))

    def reload_if_changed(self) -> bool:
        """For worker processes that do not own the admin API: follow the file worker 0 writes."""
        if not self.state_file:
            return False
        try:
            mtime = Path(self.state_file).stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._loaded_mtime:
            return False
        self._overrides.clear()
        self.load()
        self._loaded_mtime = mtime
        return True

    def load(self) -> None:
        if not self.state_file:
            return
        try:
            self._loaded_mtime = Path(self.state_file).stat().st_mtime
            data = json.loads(Path(self.state_file).read_text())
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            for entry in data["overrides"]:
                override = Override(**entry)
                if override.kind not in KINDS:
                    raise ValueError(f"unknown override kind {override.kind!r}")
                self._overrides[(override.registry, override.replica)] = override
            log.info("overrides_loaded", path=self.state_file, count=len(self._overrides))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as err:
            # refusing to start would take DNS down over an operator file; say so loudly instead
            log.error("overrides_unreadable", path=self.state_file, error=str(err), effect="starting without overrides")

    def _persist(self) -> None:
        if self.state_file:
            write_json_atomically(self.state_file, {"format": STATE_FORMAT,
                                                    "overrides": [asdict(o) for o in self._overrides.values()]})

    def audit(self, action: str, actor: str, detail: dict) -> None:
        entry = {"at": self.clock(), "action": action, "actor": actor, **detail}
        log.info("audit", **{k: v for k, v in entry.items() if k != "at"})
        if self.audit_file:
            path = Path(self.audit_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")

    def audit_entries(self, limit: int = 100) -> list[dict]:
        if not self.audit_file:
            return []
        try:
            lines = Path(self.audit_file).read_text().splitlines()[-limit:]
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    # -- the OverrideBackend of one machine ------------------------------------------------------

    async def publish(self, override: Override) -> None:
        self.put(override)

    async def withdraw(self, override: Override, actor: str, reason: str) -> bool:
        return self.remove(override.registry, override.replica, actor, reason) is not None

    async def read_audit(self, limit: int) -> list[dict]:
        return self.audit_entries(limit)

    # -- changes ---------------------------------------------------------------------------------

    def mirror(self, overrides: Mapping[tuple[str, str], Override]) -> bool:
        """Take the cluster's overrides as they are (persisted: a restart that cannot reach etcd starts
        from them; audited in etcd, not here): -> whether anything changed."""
        if dict(overrides) == self._overrides:
            return False
        self._overrides = dict(overrides)
        self._persist()
        return True

    def put(self, override: Override) -> Override | None:
        """Set (or replace) the replica's override; returns the one it replaced."""
        key = (override.registry, override.replica)
        before = self._overrides.get(key)
        self._overrides[key] = override
        self._persist()
        self.audit("set", override.actor, {"registry": override.registry, "replica": override.replica,
                                           "kind": override.kind, "reason": override.reason,
                                           "expires_at": override.expires_at,
                                           "replaced": before.kind if before else None})
        return before

    def remove(self, registry: str, replica: str, actor: str, reason: str = "") -> Override | None:
        removed = self._overrides.pop((registry, replica), None)
        if removed is not None:
            self._persist()
            self.audit("undo", actor, {"registry": registry, "replica": replica, "kind": removed.kind,
                                       "reason": reason})
        return removed

    def expire(self) -> list[Override]:
        """Drop overrides whose time is up; returns them (each logged and audited)."""
        now = self.clock()
        gone = [o for o in self._overrides.values() if not o.active(now)]
        for override in gone:
            del self._overrides[(override.registry, override.replica)]
        if gone:
            self._persist()
            for override in gone:
                self.audit("expired", "geotm", {"registry": override.registry, "replica": override.replica,
                                                "kind": override.kind, "reason": override.reason})
        return gone

    def prune(self, known: set[tuple[str, str]]) -> list[Override]:
        """After a reload: drop overrides for replicas the config no longer has."""
        gone = [o for key, o in self._overrides.items() if key not in known]
        for override in gone:
            del self._overrides[(override.registry, override.replica)]
            self.audit("dropped", "geotm", {"registry": override.registry, "replica": override.replica,
                                            "kind": override.kind, "reason": "replica removed from config"})
        if gone:
            self._persist()
        return gone
