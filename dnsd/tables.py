"""Compiled answer tables: every answer the zone can give, pre-packed per view, built once per config.

Answers that pass a traffic-manager hop hold one packed variant per replica; which one a client gets is
decided per query by the registry's RoutingPlan (dnsd.policy). So a health change swaps only the plans,
never the tables, and the query path builds no records."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dnsd import records, wire
from dnsd.answer import Answer
from dnsd.netmatch import PrefixMatcher
from dnsd.resolve import negative_soa, resolve
from dnsd.wire import PackedAnswer
from dnsd.zonedata import StaticNode, ZoneData, build_zone_data

# Any qtype not compiled for a name is answered like this one: a type no zone holds (private use).
OTHER_QTYPE = 65280
COMPILED_QTYPES = (records.A, records.AAAA, records.CNAME, records.ANY)


@dataclass(frozen=True, slots=True)
class Entry:
    packed: PackedAnswer | None  # the answer, when it does not depend on a traffic-manager choice
    variants: tuple[PackedAnswer, ...] | None  # else: one answer per replica of `registry`
    variants_short: tuple[PackedAnswer, ...] | None  # the same with the short traffic-manager TTL
    registry: int  # index into config.registries (for variants)
    view_dependent: bool  # VNet views get a different answer for this question
    slow: bool = False  # chain passes more than one traffic-manager hop: resolved per query
    kind: str = ""  # what the name is, for metrics: global, traffic_manager, regional, data, ...


def name_key(name: str) -> bytes:
    """Canonical name -> lower-case wire form, the key the query parser produces."""
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("ascii")
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class CompiledZone:
    zd: ZoneData
    zone_key: bytes
    view_matcher: PrefixMatcher[int]
    network_matcher: PrefixMatcher[int]
    default_network: int  # network index for clients in no client network
    exact: tuple[dict[tuple[bytes, int], Entry], ...]  # per view: (name key, qtype) -> entry
    other: tuple[dict[bytes, Entry], ...]  # per view: name key -> entry for any other qtype
    negative_cache: dict[int, PackedAnswer]  # NXDOMAIN body per qname wire length (filled lazily)

    def in_zone(self, key: bytes) -> bool:
        zone_key, i, n = self.zone_key, 0, len(key)
        while i < n:
            if key[i:] == zone_key:
                return True
            i += key[i] + 1
        return False

    def nxdomain(self, key_length: int) -> PackedAnswer:
        """NXDOMAIN with the SOA; its names point into the question's zone suffix, whose offset
        depends only on the qname's length, so one body per length serves every name."""
        packed = self.negative_cache.get(key_length)
        if packed is None:
            filler = key_length - len(self.zone_key)
            labels, remaining = [], filler
            while remaining > 0:  # '=' never appears in real names, so nothing else compresses into it
                size = min(63, remaining - 1) or 1
                labels.append("=" * size)
                remaining -= size + 1
            synthetic = ".".join(labels + [self.zd.zone])
            answer = Answer(3, (), (negative_soa(self.zd),))
            packed = wire.encode_answer(answer, key_length, synthetic)
            if len(self.negative_cache) < 256:
                self.negative_cache[key_length] = packed
        return packed


def compile_zone(zd: ZoneData) -> CompiledZone:
    config = zd.config
    views = range(len(zd.views))
    exact: list[dict[tuple[bytes, int], Entry]] = [{} for _ in views]
    other: list[dict[bytes, Entry]] = [{} for _ in views]
    static_types = set()
    for name in zd.all_names():
        for view in views:
            node = zd.node(view, name)
            if isinstance(node, StaticNode):
                static_types.update(node.rrsets)
    extra_types = tuple(sorted(static_types - set(COMPILED_QTYPES)))

    for name in zd.all_names():
        key = name_key(name)
        generic = _compile_question(zd, name, OTHER_QTYPE)
        for view in views:
            other[view][key] = generic[view]
        for qtype in COMPILED_QTYPES + extra_types:
            entries = _compile_question(zd, name, qtype)
            for view in views:
                if qtype in extra_types and entries[view] == generic[view]:
                    continue  # the same as any other type: the `other` table answers it
                exact[view][(key, qtype)] = entries[view]
    for name in zd.empty_non_terminals:
        entries = _compile_question(zd, name, OTHER_QTYPE)
        for view in views:
            other[view][name_key(name)] = entries[view]

    view_matcher = PrefixMatcher((net, index + 1) for index, view in enumerate(config.views) for net in view.sources)
    networks = config.topology.client_networks
    network_matcher = PrefixMatcher((cn.network, index) for index, cn in enumerate(networks))
    return CompiledZone(zd=zd, zone_key=name_key(zd.zone), view_matcher=view_matcher,
                        network_matcher=network_matcher, default_network=len(networks),
                        exact=tuple(exact), other=tuple(other), negative_cache={})


def _compile_question(zd: ZoneData, name: str, qtype: int) -> list[Entry]:
    """One entry per view for (name, qtype); views that answer alike share equal entries."""
    key_length = len(name_key(name))
    per_view: list[tuple[int | None, tuple[Answer, ...], bool, tuple[Answer, ...]]] = []
    kind = metric_kind(zd, name)
    for view in range(len(zd.views)):
        hit: list[int] = []

        def record_hop(registry_index: int) -> tuple[int, str]:
            hit.append(registry_index)
            return 0, ""

        first = resolve(zd, view, name, qtype, record_hop)
        if not hit:
            per_view.append((None, (first,), False, ()))
            continue
        registry_index = hit[0]
        if len(set(hit)) > 1:
            per_view.append((registry_index, (), True, ()))
            continue
        replicas = zd.config.registries[registry_index].replicas
        answers = tuple(resolve(zd, view, name, qtype, lambda _r, i=i: (i, "")) for i in range(len(replicas)))
        short = tuple(resolve(zd, view, name, qtype, lambda _r, i=i: (i, ""), short_ttl=(registry_index,))
                      for i in range(len(replicas)))
        per_view.append((registry_index, answers, False, short))

    view_dependent = any(item != per_view[0] for item in per_view[1:])

    def pack(answers: tuple[Answer, ...]) -> tuple[PackedAnswer, ...]:
        return tuple(wire.encode_answer(dataclasses.replace(a, client_dependent=view_dependent), key_length, name)
                     for a in answers)

    entries = []
    for registry_index, answers, slow, short in per_view:
        if slow:
            entries.append(Entry(None, None, None, registry_index, True, slow=True, kind=kind))
        elif registry_index is None:
            entries.append(Entry(pack(answers)[0], None, None, -1, view_dependent, kind=kind))
        else:
            packed = pack(answers)
            packed_short = packed if short == answers else pack(short)
            entries.append(Entry(None, packed, packed_short, registry_index, view_dependent, kind=kind))
    return entries


def metric_kind(zd: ZoneData, name: str) -> str:
    """A small fixed set of labels for what a name is (bounded metric cardinality)."""
    node = zd.public.get(name)
    if node is None:
        for view in range(1, len(zd.views)):
            node = zd.node(view, name)
            if node is not None:
                break
    if node is None:
        return "empty_non_terminal"
    label = node.kind.split(" (")[0]
    return {"global name": "global", "traffic-manager name": "traffic_manager", "regional name": "regional",
            "data name": "data", "replica host": "replica", "privatelink name": "privatelink",
            "private regional name": "regional", "private data name": "data", "apex": "apex",
            "record": "static", "private endpoint": "private"}.get(label, "other")


def compile_config(config) -> CompiledZone:
    return compile_zone(build_zone_data(config))
