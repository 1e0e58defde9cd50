"""What to probe: every replica with a `probe:` spec in the shared config, as (registry, replica, spec)."""
from __future__ import annotations

from dataclasses import dataclass

from dnsd.model import Config, ProbeSpec


@dataclass(frozen=True, slots=True)
class Target:
    registry: str
    replica: str
    spec: ProbeSpec

    @property
    def key(self) -> tuple[str, str]:
        return (self.registry, self.replica)

    @property
    def label(self) -> str:
        return f"{self.registry}/{self.replica}"


def targets_of(config: Config) -> list[Target]:
    return [Target(reg.name, rep.name, rep.probe) for reg in config.registries for rep in reg.replicas
            if rep.probe is not None]
