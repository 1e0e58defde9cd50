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


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    status: Status
    reason: str = ""
    since: float = 0.0  # unix time of the last transition

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
