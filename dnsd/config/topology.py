"""The topology sections (regions, latency_ms, clients): the inputs of performance routing, and the
region pairs the latency table leaves out, for the registries that route by performance."""
from __future__ import annotations

from dnsd.config import keys
from dnsd.config.reader import Reader
from dnsd.config.yamlnodes import Map, Node, Scalar
from dnsd.model import ClientNetwork, Topology, frozen_map

RegionPairs = list[tuple[str, str]]


def topology_section(r: Reader, top: Map) -> tuple[Topology, RegionPairs]:
    """The topology and the (a, b) region pairs with no latency given."""
    regions: list[str] = []
    regions_node = top.get("regions")
    for item in r.sequence(regions_node, "a list of region names"):
        name = r.string(item)
        if name is not None and r.label(item, name, "region"):
            if name in regions:
                r.fail(item, f"region {name!r} is listed twice")
            regions.append(name)
    if regions_node is None:
        r.fail(top, "missing required key 'regions'")
    known = set(regions)
    latency = _latency(r, top.get("latency_ms"), regions)
    networks: list[ClientNetwork] = []
    default_region = None
    clients = r.mapping(top.get("clients"), keys.CLIENTS)
    if clients is not None:
        default_node = clients.get("default_region")
        default_region = r.string(default_node)
        if default_region is not None and default_region not in known:
            unknown_region(r, default_node, default_region, known, "default_region")
            default_region = None
        net_map = r.mapping(clients.get("networks"), open_keys=True,
                            what="a mapping of CIDR: region")
        for cidr, region_node in net_map or ():
            network = r.network(Scalar(net_map.key_mark(cidr), region_node.path, cidr))
            region = r.string(region_node)
            if region is not None and region not in known:
                unknown_region(r, region_node, region, known, "client network")
                continue
            if network is not None and region is not None:
                networks.append(ClientNetwork(network, region))
    missing = [(a, b) for a in regions for b in regions if (a, b) not in latency]
    return Topology(regions=tuple(regions), latency_ms=frozen_map(latency),
                    client_networks=tuple(networks), default_region=default_region), missing


def _latency(r: Reader, node: Node | None, regions: list[str]) -> dict[tuple[str, str], float]:
    """latency_ms: a symmetric table, each pair given once (either way round); a region to itself is 0."""
    known = set(regions)
    latency: dict[tuple[str, str], float] = {(a, a): 0.0 for a in regions}
    latency_node = r.mapping(node, open_keys=True)
    if latency_node is None:
        return latency
    for a, row in latency_node:
        if a not in known:
            unknown_region(r, row, a, known, where="latency_ms has a row for")
            continue
        row_map = r.mapping(row, open_keys=True, what="a mapping of region: milliseconds")
        for b, value_node in row_map or ():
            if b not in known:
                unknown_region(r, value_node, b, known, where="latency_ms names")
                continue
            ms = r.scalar(value_node, _non_negative_number, "milliseconds (a number >= 0)")
            if ms is None:
                continue
            if a == b and ms != 0:
                r.fail(value_node, f"latency from {a!r} to itself must be 0")
            if (b, a) in latency and a != b and latency[(b, a)] != ms:
                r.fail(value_node, f"latency {a}->{b} is {ms:g} but {b}->{a} is {latency[(b, a)]:g}; "
                                   "the table is symmetric, give each pair once")
            latency[(a, b)] = latency[(b, a)] = ms
    return latency


def unknown_region(r: Reader, node: Node, name: str, known: set[str], where: str) -> None:
    r.fail(node, f"{where} unknown region {name!r} (regions: {', '.join(sorted(known)) or 'none'})")


def _non_negative_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError()
    return float(value)
