"""Routing of a registry's global name: which replica each client gets, given health. Pure; no I/O."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import lru_cache

from dnsd.routing.health import HealthSnapshot
from dnsd.model import Registry, Topology
from dnsd.routing.overrides import DRAIN, FORCE_DOWN, FORCE_UP, NO_OVERRIDES, Overrides

# Weighted routing hashes each client subnet into one of SLOTS slots and each slot to a replica by
# weighted rendezvous hashing: shares follow the weights (to 1/SLOTS), a client keeps its replica
# while that replica serves (an upload session started on one replica must finish there), and when
# a replica drops out only its own slots move.
SLOTS = 256
WEIGHTED_IPV4_PREFIX = 24  # clients sharing a /24 (IPv4) or /56 (IPv6) share a replica
WEIGHTED_IPV6_PREFIX = 56
_MASK64 = (1 << 64) - 1
# by_region's mark for a region equally near to more than one serving replica: the client network decides
TIED = -1
PICKS_KEPT = 65_536  # tie picks remembered per plan (one per client network asking); cleared whole when full


def weighted_slot(bits: int, address: int, source_prefix: int | None) -> int:
    """The slot of a client address (source address or ECS subnet) for weighted routing."""
    prefix = WEIGHTED_IPV4_PREFIX if bits == 32 else WEIGHTED_IPV6_PREFIX
    if source_prefix is not None and source_prefix < prefix:
        prefix = source_prefix
    subnet = address >> (bits - prefix)
    return (((subnet + bits) * 0x9E3779B97F4A7C15) & _MASK64) >> (64 - 8)  # top 8 bits: 0..255


def _hash_unit(*parts: object) -> float:
    """A stable pseudo-random number in (0, 1) for the parts; the same on every run and host."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


@lru_cache(maxsize=4096)
def _name_costs(name: str) -> tuple[float, ...]:
    """-ln(u) for each slot of one replica name: its fixed rendezvous draw, computed once per name."""
    return tuple(-math.log(_hash_unit("slot", slot, name)) for slot in range(SLOTS))


@lru_cache(maxsize=4096)
def _slot_costs(replica_names: tuple[str, ...]) -> tuple[tuple[float, ...], ...]:
    """-ln(u) per (slot, replica): fixed per replica set, so health changes only redo the argmax."""
    return tuple(zip(*(_name_costs(name) for name in replica_names)))


@lru_cache(maxsize=4096)
def _weighted_slots(replica_names: tuple[str, ...], weights: tuple[int, ...],
                    serving: tuple[int, ...]) -> tuple[int, ...]:
    costs = _slot_costs(replica_names)
    usable = [i for i in serving if weights[i] > 0] or list(serving)
    return tuple(max(usable, key=lambda i: (weights[i] or 1) / row[i]) for row in costs)


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    """The global-name decision for one registry under one health snapshot."""

    registry: Registry
    eligible: tuple[int, ...]  # replicas with global routing on (indices into registry.replicas)
    serving: tuple[int, ...]  # the ones clients may be sent to now
    all_down: bool  # every eligible replica degraded: the all-down policy decided `serving`
    servfail: bool  # all-down policy says SERVFAIL
    fixed: int | None  # one replica for every client (priority routing, fallback, or a single choice)
    # performance: the nearest serving replica per region (topology.regions, then the default region's
    # entry), or TIED: then `tied` holds the equally near ones and the client network picks among them
    by_region: tuple[int, ...]
    slots: tuple[int, ...]  # weighted: replica per slot
    reason: str
    short_ttl: bool = False  # a serving replica is suspect or recovering: answer with the short TM TTL
    tied: tuple[tuple[int, ...], ...] = ()  # per by_region entry: the equally near replicas (empty: no tie)
    client_networks: int = 0  # topology's client networks: the network index of the default, for tie keys
    regions: tuple[str, ...] = ()  # topology.regions, for the tie keys of GeoIP-placed clients
    # network index -> the pick among its region's tied replicas, filled as clients ask (query path only)
    picks: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def depends_on_client(self) -> bool:
        return self.fixed is None and not self.servfail

    def choice(self, network_index: int, region_index: int, slot: int) -> int | None:
        """Replica index for a client (its network, that network's region: CompiledZone.network_regions,
        its weighted slot), or None for SERVFAIL."""
        if self.servfail:
            return None
        if self.fixed is not None:
            return self.fixed
        if self.by_region:
            index = self.by_region[region_index]
            if index != TIED:
                return index
            pick = self.picks.get(network_index)
            if pick is None:
                if len(self.picks) >= PICKS_KEPT:
                    self.picks.clear()
                pick = self.picks[network_index] = tie_break(self.registry, self.tied[region_index],
                                                             self.tie_key(network_index))
            return pick
        return self.slots[slot]

    def tie_key(self, network_index: int) -> object:
        """What a tie is hashed with: the client network's index, "default", or "geoip REGION"."""
        if network_index < self.client_networks:
            return network_index
        if network_index == self.client_networks:
            return "default"
        return f"geoip {self.regions[network_index - self.client_networks - 1]}"


def plan(registry: Registry, topology: Topology, health: HealthSnapshot,
         overrides: Overrides = NO_OVERRIDES) -> RoutingPlan:
    replicas = registry.replicas

    def override(i: int) -> str | None:
        found = overrides.get((registry.name, replicas[i].name))
        return found.kind if found is not None else None

    def healthy_now(i: int) -> bool:
        kind = override(i)
        if kind in (FORCE_UP, FORCE_DOWN):
            return kind == FORCE_UP
        return health.of(registry.name, replicas[i].name).serving

    eligible = tuple(i for i, rep in enumerate(replicas) if rep.global_routing and override(i) != DRAIN)
    healthy = tuple(i for i in eligible if healthy_now(i))
    short_ttl = any(health.of(registry.name, replicas[i].name).trend for i in eligible if override(i) is None)
    common = dict(registry=registry, eligible=eligible, by_region=(), slots=(), short_ttl=short_ttl)
    if not eligible:
        # every replica drained (only possible with --force): fail open over the configured set
        eligible = tuple(i for i, rep in enumerate(replicas) if rep.global_routing) or tuple(range(len(replicas)))
        common["eligible"] = eligible
        healthy = ()
    if healthy:
        serving, all_down, why = healthy, False, _serving_reason(registry, eligible, healthy, health, overrides)
    else:
        policy = registry.all_down
        all_down = True
        why = f"all {len(eligible)} globally routed replicas degraded; all-down policy {policy.mode}"
        if policy.mode == "servfail":
            return RoutingPlan(serving=(), all_down=True, servfail=True, fixed=None, reason=why + ": SERVFAIL",
                               **common)
        if policy.mode == "fallback":
            index = next(i for i, rep in enumerate(replicas) if rep.name == policy.replica)
            return RoutingPlan(serving=(index,), all_down=True, servfail=False, fixed=index,
                               reason=why + f": everything to {policy.replica}", **common)
        serving = eligible  # fail open: as if all were healthy
        why += ": routing as if all were online"
    if len(serving) == 1:
        return RoutingPlan(serving=serving, all_down=all_down, servfail=False, fixed=serving[0],
                           reason=why, **common)
    if registry.routing == "priority":
        first = min(serving, key=lambda i: (replicas[i].priority, i))
        return RoutingPlan(serving=serving, all_down=all_down, servfail=False, fixed=first,
                           reason=why + f"; priority: {replicas[first].name} (priority {replicas[first].priority})",
                           **common)
    if registry.routing == "weighted":
        slots = _weighted_slots(tuple(rep.name for rep in replicas), tuple(rep.weight for rep in replicas), serving)
        common["slots"] = slots
        return RoutingPlan(serving=serving, all_down=all_down, servfail=False, fixed=None,
                           reason=why + "; weighted, sticky per client subnet", **common)
    # per region, not per client network: a health change costs registries x regions, however many
    # networks the config has (they map to a region once per config: CompiledZone.network_regions)
    default = topology.default_region or replicas[serving[0]].location
    nearest = [nearest_replicas(registry, topology, serving, region) for region in (*topology.regions, default)]
    common.update(by_region=tuple(found[0] if len(found) == 1 else TIED for found in nearest),
                  tied=tuple(found if len(found) > 1 else () for found in nearest),
                  client_networks=len(topology.client_networks), regions=topology.regions)
    return RoutingPlan(serving=serving, all_down=all_down, servfail=False, fixed=None,
                       reason=why + "; performance: nearest serving replica to the client's region", **common)


def nearest_replicas(registry: Registry, topology: Topology, serving: tuple[int, ...], region: str) -> tuple[int, ...]:
    """The serving replicas closest to `region` (more than one when equally close)."""
    replicas, latency = registry.replicas, topology.latency_ms
    distances = [latency[(region, replicas[i].location)] for i in serving]
    best = min(distances)
    return tuple(i for i, distance in zip(serving, distances) if distance == best)


def tie_break(registry: Registry, tied: tuple[int, ...], tie_key: object) -> int:
    """Among equally near replicas, a stable pick per client network (rendezvous hash): a client between
    two replicas never flips between them, and when one drops out only its own clients move."""
    return max(tied, key=lambda i: _hash_unit("tie", registry.name, tie_key, registry.replicas[i].name))


def _serving_reason(registry: Registry, eligible: tuple[int, ...], healthy: tuple[int, ...],
                    health: HealthSnapshot, overrides: Overrides) -> str:
    parts = [f"{len(healthy)} of {len(eligible)} globally routed replicas serving"]
    skipped = []
    for i in eligible:
        if i in healthy:
            continue
        name = registry.replicas[i].name
        forced = overrides.get((registry.name, name))
        why = forced.describe() if forced else (health.of(registry.name, name).reason or "no reason given")
        skipped.append(f"{name} ({why})")
    if skipped:
        parts.append("degraded: " + ", ".join(skipped))
    off = [rep.name for rep in registry.replicas if not rep.global_routing]
    if off:
        parts.append("global routing off in config: " + ", ".join(off))
    drained = [f"{o.replica} ({o.describe()})" for o in overrides.values()
               if o.registry == registry.name and o.kind == DRAIN]
    if drained:
        parts.append("drained: " + ", ".join(sorted(drained)))
    return "; ".join(parts)
