"""Replica health as immutable values: EndpointHealth per replica, HealthSnapshot for all of them."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


class Status(str, enum.Enum):
    ONLINE = "online"
    DEGRADED = "degraded"
    CHECKING = "checking"  # not yet decided by probes: routed as online (fail open)


SUSPECT, RECOVERING = "suspect", "recovering"


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    status: Status
    reason: str = ""
    since: float = 0.0  # unix time of the last transition
    # "suspect": online but the last checks failed; "recovering": degraded but the last checks passed.
    # Either shortens the traffic-manager TTL, so clients re-resolve soon when a change is likely.
    trend: str = ""

    @property
    def serving(self) -> bool:
        """May the global name route here? Only a decided DEGRADED takes a replica out."""
        return self.status is not Status.DEGRADED


ONLINE = EndpointHealth(Status.ONLINE, "no health data: assumed online")


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """Status of every (registry, replica) we know about; missing entries are ONLINE."""

    generation: int = 0
    endpoints: Mapping[tuple[str, str], EndpointHealth] = field(default_factory=lambda: MappingProxyType({}))

    def of(self, registry: str, replica: str) -> EndpointHealth:
        return self.endpoints.get((registry, replica), ONLINE)

    def with_status(self, registry: str, replica: str, health: EndpointHealth) -> HealthSnapshot:
        endpoints = dict(self.endpoints)
        endpoints[(registry, replica)] = health
        return HealthSnapshot(self.generation + 1, MappingProxyType(endpoints))


# -- the document probes serves and dnsd reads (GET /v1/health) --------------------------------

FEED_FORMAT = "geotm-health/1"


@dataclass(frozen=True, slots=True)
class FeedDocument:
    instance: str  # which probes process (changes on restart, so ETags never collide across restarts)
    generation: int  # bumps on every status change
    generated_at: float
    endpoints: Mapping[tuple[str, str], EndpointHealth]

    def to_json(self) -> dict:
        return {"format": FEED_FORMAT, "instance": self.instance, "generation": self.generation,
                "generated_at": self.generated_at,
                "endpoints": [{"registry": reg, "replica": rep, "status": h.status.value, "reason": h.reason,
                               "since": h.since, "trend": h.trend}
                              for (reg, rep), h in sorted(self.endpoints.items())]}

    @classmethod
    def from_json(cls, data: object) -> FeedDocument:
        """Strict: any missing or ill-typed field raises ValueError naming it; nothing half-parsed is used."""
        if not isinstance(data, dict):
            raise ValueError("health document is not a JSON object")
        if data.get("format") != FEED_FORMAT:
            raise ValueError(f"unknown health document format {data.get('format')!r} (expected {FEED_FORMAT!r})")
        instance = _field(data, "instance", str)
        generation = _field(data, "generation", int)
        generated_at = float(_field(data, "generated_at", (int, float)))
        entries = _field(data, "endpoints", list)
        endpoints: dict[tuple[str, str], EndpointHealth] = {}
        for index, entry in enumerate(entries):
            where = f"endpoints[{index}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where} is not an object")
            key = (_field(entry, "registry", str, where), _field(entry, "replica", str, where))
            status_text = _field(entry, "status", str, where)
            try:
                status = Status(status_text)
            except ValueError:
                raise ValueError(f"{where}.status {status_text!r} is not one of "
                                 f"{', '.join(s.value for s in Status)}") from None
            if key in endpoints:
                raise ValueError(f"{where}: {key[0]}/{key[1]} listed twice")
            trend = entry.get("trend", "")
            if trend not in ("", SUSPECT, RECOVERING):
                raise ValueError(f"{where}.trend {trend!r} is not one of '', {SUSPECT}, {RECOVERING}")
            endpoints[key] = EndpointHealth(status, _field(entry, "reason", str, where),
                                            float(_field(entry, "since", (int, float), where)), trend)
        return cls(instance, generation, generated_at, MappingProxyType(endpoints))


def _field(data: dict, key: str, kind, where: str = ""):
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        name = f"{where}.{key}" if where else key
        raise ValueError(f"{name} is missing or not {getattr(kind, '__name__', 'a number')}")
    return value
