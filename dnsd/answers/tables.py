"""Compiled answer tables: every answer the zone can give, pre-packed per view, built once per config.

Answers that pass a traffic-manager hop hold one packed variant per replica; which one a client gets is
decided per query by the registry's RoutingPlan (dnsd.routing.policy). So a health change swaps only the plans,
never the tables, and the query path builds no records."""
from __future__ import annotations

from dataclasses import dataclass

from dnsd import records
from dnsd.answers.answer import Answer
from dnsd.routing import geoip
from dnsd.routing.geoip import GeoTable
from dnsd.routing.netmatch import PrefixMatcher
from dnsd.answers.resolve import negative_soa, resolve
from dnsd.answers.encode import PackedAnswer, encode_answer, with_ttls
from dnsd.answers.zonedata import AliasNode, StaticNode, TrafficManagerNode, ZoneData, build_zone_data

# Any qtype not compiled for a name is answered like this one: a type no zone holds (private use).
OTHER_QTYPE = 65280


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
    view_matcher: PrefixMatcher[int]  # VNet addresses -> view index
    trusted_matcher: PrefixMatcher[frozenset[int]]  # resolver address -> views that trust its ECS
    network_matcher: PrefixMatcher[int]
    default_network: int  # network index for clients in no client network (then the GeoIP regions' indices)
    exact: tuple[dict[tuple[bytes, int], Entry], ...]  # per view: (name key, qtype) -> entry
    other: tuple[dict[bytes, Entry], ...]  # per view: name key -> entry for any other qtype
    negative_cache: dict[int, PackedAnswer]  # NXDOMAIN body per qname wire length (filled lazily)
    geo: GeoTable | None = None  # clients.geoip compiled: region r is network index default_network + 1 + r
    located: tuple[tuple[str, str], ...] = ()  # per network index: (region, source) for the metrics
    # per network index: its region's index in RoutingPlan.by_region (topology.regions, the default's
    # entry after them), so plans choose per region and a health change never walks the networks
    network_regions: tuple[int, ...] = ()

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
            labels, remaining = [], key_length - len(self.zone_key)
            while remaining > 0:  # '=' never appears in real names, so nothing else compresses into it
                size = min(63, remaining - 1)
                if remaining - size - 1 == 1:  # one byte left could hold no label (a label takes >= 2)
                    size -= 1
                labels.append("=" * size)
                remaining -= size + 1
            synthetic = ".".join(labels + [self.zd.zone])
            answer = Answer(3, (), (negative_soa(self.zd),))
            packed = encode_answer(answer, key_length, synthetic)
            if len(self.negative_cache) < 256:
                self.negative_cache[key_length] = packed
        return packed


def compile_zone(zd: ZoneData, geo: GeoTable | None = None) -> CompiledZone:
    config = zd.config
    views = range(len(zd.views))
    exact: list[dict[tuple[bytes, int], Entry]] = [{} for _ in views]
    other: list[dict[bytes, Entry]] = [{} for _ in views]
    overridden = set().union(*zd.overrides)
    tm_owners = {node.owner for node in zd.public.values() if isinstance(node, TrafficManagerNode)}

    for name in zd.all_names():
        key = name_key(name)
        # a name no view overrides, and whose chain meets no overridden name, answers alike in every
        # view: compile it once and share the entries (most names of most registries)
        chain, final_types = _chain(zd, name)
        compiled_views = list(views) if chain & overridden else [0]
        compiler = _QuestionCompiler(zd, name, compiled_views, tm_owners)
        generic = compiler.entries(OTHER_QTYPE)
        # A type the chain can never end at answers exactly like OTHER (chain + NODATA): the `other`
        # table serves it. So only the types held where the chain ends, plus CNAME and ANY, which stop
        # at the first alias, need entries of their own.
        qtypes = sorted(final_types | {records.CNAME, records.ANY})
        for qtype in qtypes:
            entries = compiler.entries(qtype)
            for view in views:
                entry = entries[view if len(compiled_views) > 1 else 0]
                if entry == generic[view if len(compiled_views) > 1 else 0]:
                    continue
                exact[view][(key, qtype)] = entry
        for view in views:
            other[view][key] = generic[view if len(compiled_views) > 1 else 0]
    for name in zd.empty_non_terminals:
        entries = _QuestionCompiler(zd, name, [0], tm_owners).entries(OTHER_QTYPE)
        for view in views:
            other[view][name_key(name)] = entries[0]

    view_matcher = PrefixMatcher((net, index + 1) for index, view in enumerate(config.views) for net in view.sources)
    trusted_matcher = PrefixMatcher(trusted_resolver_entries(config.views))
    networks = config.topology.client_networks
    network_matcher = PrefixMatcher((cn.network, index) for index, cn in enumerate(networks))
    topology = config.topology
    located = tuple((cn.region, "networks") for cn in networks) + ((topology.default_region or "", "default"),)
    if topology.geoip is not None:
        located += tuple((region, "database") for region in topology.regions)
    return CompiledZone(network_regions=network_regions(topology), zd=zd, zone_key=name_key(zd.zone), view_matcher=view_matcher, trusted_matcher=trusted_matcher,
                        network_matcher=network_matcher, default_network=len(networks),
                        exact=tuple(exact), other=tuple(other), negative_cache={},
                        geo=geo if topology.geoip is not None else None, located=located)


def network_regions(topology) -> tuple[int, ...]:
    """Region index per network index: each client network's region, then the default entry
    (len(regions)), then with clients.geoip region r for GeoIP region r."""
    index = {region: i for i, region in enumerate(topology.regions)}
    default = len(topology.regions)
    regions = tuple(index[cn.region] for cn in topology.client_networks) + (default,)
    if topology.geoip is not None:
        regions += tuple(range(len(topology.regions)))
    return regions


def trusted_resolver_entries(views) -> list[tuple[object, frozenset[int]]]:
    """(network, the views trusting every address in it) for each listed resolver network. Listed
    networks may nest (one view trusts 10.0.0.0/8, another 10.1.0.53/32): each entry also holds the
    views of the networks around it, so the longest match alone gives every view trusting an address."""
    listed = {(net, index + 1) for index, view in enumerate(views) for net in view.trusted_resolvers}
    return [(net, frozenset(v for outer, v in listed
                            if outer.version == net.version and net.subnet_of(outer)))
            for net in {net for net, _ in listed}]


def _chain(zd: ZoneData, name: str) -> tuple[set[str], set[int]]:
    """Every name the public chain from `name` may visit (all replica hosts behind a traffic-manager
    hop), and the record types held at the static names where it may end."""
    seen: set[str] = set()
    types: set[int] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or len(seen) > 64:
            continue
        seen.add(current)
        node = zd.public.get(current)
        if isinstance(node, AliasNode):
            todo.append(node.rr.rdata.target)
        elif isinstance(node, TrafficManagerNode):
            todo.extend(rep.host for rep in zd.config.registries[node.registry_index].replicas)
        elif isinstance(node, StaticNode):
            types.update(node.rrsets)
    for view in range(1, len(zd.views)):  # a view's own static names (private endpoints) count too
        for visited in list(seen):
            node = zd.overrides[view].get(visited)
            if isinstance(node, StaticNode):
                types.update(node.rrsets)
            elif isinstance(node, AliasNode):
                target = zd.overrides[view].get(node.rr.rdata.target) or zd.public.get(node.rr.rdata.target)
                if isinstance(target, StaticNode):
                    types.update(target.rrsets)
    return seen, types


class _QuestionCompiler:
    """Entries for one name, per compiled view; views that answer alike share equal entries."""

    def __init__(self, zd: ZoneData, name: str, views: list[int], tm_owners: set[str]):
        self.zd = zd
        self.name = name
        self.views = views
        self.tm_owners = tm_owners
        self.key_length = len(name_key(name))
        self.kind = metric_kind(zd, name)
        self._alias_answer: list[Entry] | None = None
        # an alias in every view it is compiled for (a privatelink name is an alias publicly, an A in a VNet)
        self.is_alias = all(isinstance(zd.node(view, name), (AliasNode, TrafficManagerNode)) for view in views)

    def entries(self, qtype: int) -> list[Entry]:
        if qtype == records.ANY and self.is_alias and self._alias_answer is not None:
            return self._alias_answer  # RFC 8482 at an alias: the CNAME, the same as a CNAME query
        result = self._compile(qtype)
        if qtype == records.CNAME and self.is_alias:
            self._alias_answer = result
        return result

    def _compile(self, qtype: int) -> list[Entry]:
        zd, name = self.zd, self.name
        per_view: list[tuple[int | None, tuple[Answer, ...], bool]] = []
        for view in self.views:
            hit: list[int] = []

            def record_hop(registry_index: int) -> tuple[int, str]:
                hit.append(registry_index)
                return 0, ""

            first = resolve(zd, view, name, qtype, record_hop)
            if not hit:
                per_view.append((None, (first,), False))
            elif len(set(hit)) > 1:
                per_view.append((hit[0], (), True))
            else:
                replicas = zd.config.registries[hit[0]].replicas
                answers = (first,) + tuple(resolve(zd, view, name, qtype, lambda _r, i=i: (i, ""))
                                           for i in range(1, len(replicas)))
                per_view.append((hit[0], answers, False))
        view_dependent = len(self.views) > 1 and any(item != per_view[0] for item in per_view[1:])
        short_ttl = zd.config.zone.ttls.traffic_manager_short
        entries = []
        for registry_index, answers, slow in per_view:
            if slow:
                entries.append(Entry(None, None, None, registry_index, True, slow=True, kind=self.kind))
                continue
            packed, short = [], []
            for answer in answers:
                offsets: list[int] = []
                encoded = encode_answer(answer, self.key_length, name, offsets, client_dependent=view_dependent)
                packed.append(encoded)
                patches = [(offset, min(rr.ttl, short_ttl)) for offset, rr in zip(offsets, answer.answer)
                           if rr.rtype == records.CNAME and rr.name in self.tm_owners]
                short.append(with_ttls(encoded, patches) if patches else encoded)
            if registry_index is None:
                entries.append(Entry(packed[0], None, None, -1, view_dependent, kind=self.kind))
            else:
                entries.append(Entry(None, tuple(packed), tuple(short), registry_index, view_dependent,
                                     kind=self.kind))
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


def compile_config(config, geo: GeoTable | None = None) -> CompiledZone:
    """geo: the config's GeoIP database already compiled (a reload whose file did not change); else
    it is read here when the config names one (geoip.GeoIPError when it cannot be used)."""
    if geo is None and config.topology.geoip is not None:
        geo = geoip.load(config.topology)
    return compile_zone(build_zone_data(config), geo)
