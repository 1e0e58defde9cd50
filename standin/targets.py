"""Which replicas the stand-in serves and where: Target values from a geotm config or from (registry, replica, listeners) tuples, each address claimed by one replica only."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dnsd.common.hostport import format_host_port


@dataclass(frozen=True, slots=True)
class Target:
    """One replica to stand in for, and where it listens."""

    registry: str
    replica: str
    listeners: tuple[tuple[str, int], ...]
    tls: frozenset[tuple[str, int]] = frozenset()  # listeners some https check dials


def make_targets(items: Iterable[tuple[str, str, Iterable[tuple[str, int]]]],
                 tls: Iterable[tuple[str, int]] = ()) -> list[Target]:
    """[(registry, replica, [(address, port), ...])] -> targets. Raises ValueError when two replicas
    claim the same address and port, or a replica has no listener."""
    owners: dict[tuple[str, int], str] = {}
    tls_set = {(str(a), int(p)) for a, p in tls}
    targets = []
    for registry, replica, listeners in items:
        unique = list(dict.fromkeys((str(address), int(port)) for address, port in listeners))
        if not unique:
            raise ValueError(f"{registry}/{replica}: no address to listen on")
        for where in unique:
            owner = owners.setdefault(where, f"{registry}/{replica}")
            if owner != f"{registry}/{replica}":
                raise ValueError(f"{format_host_port(*where)} is claimed by both {owner} and {registry}/{replica}")
        targets.append(Target(registry, replica, tuple(unique), frozenset(w for w in unique if w in tls_set)))
    return targets


def targets_from_config(config: Any) -> list[Target]:
    """Every replica with probe checks, listening on each distinct (address, port) of its checks;
    the ones an https check (of any kind but tcp) dials are marked TLS."""
    items, tls = [], []
    for registry in config.registries:
        for replica in registry.replicas:
            if replica.probe is None:
                continue
            checks = replica.probe.checks
            items.append((registry.name, replica.name, [(c.address, c.port) for c in checks]))
            tls += [(c.address, c.port) for c in checks if c.kind != "tcp" and c.scheme == "https"]
    return make_targets(items, tls)
