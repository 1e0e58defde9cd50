"""The topology sections (regions and their coordinates, latency_ms, clients with their networks and
GeoIP database): the inputs of performance routing, and the region pairs the latency table leaves
out, for the registries that route by performance."""
from __future__ import annotations

from dnsd.config import keys
from dnsd.config.reader import Reader
from dnsd.config.yamlnodes import Map, Node, Scalar
from dnsd.model import CONTINENT_CODES, ClientNetwork, Coordinates, GeoIPSettings, Topology, frozen_map

RegionPairs = list[tuple[str, str]]


def topology_section(r: Reader, top: Map) -> tuple[Topology, RegionPairs]:
    """The topology and the (a, b) region pairs with no latency given."""
    regions: list[str] = []
    regions_node = top.get("regions")
    coordinates = _regions(r, regions_node, regions)
    if regions_node is None:
        r.fail(top, "missing required key 'regions'")
    known = set(regions)
    latency = _latency(r, top.get("latency_ms"), regions)
    networks: list[ClientNetwork] = []
    default_region = None
    geoip = None
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
        geoip = _geoip(r, clients.get("geoip"), known, coordinates)
    missing = [(a, b) for a in regions for b in regions if (a, b) not in latency]
    return Topology(regions=tuple(regions), latency_ms=frozen_map(latency),
                    client_networks=tuple(networks), default_region=default_region,
                    coordinates=frozen_map(coordinates), geoip=geoip), missing


def _regions(r: Reader, node: Node | None, regions: list[str]) -> dict[str, Coordinates]:
    """`regions`: a list of names, or a mapping of name: {latitude, longitude} (or nothing). Appends the
    names to `regions`; returns the coordinates given."""
    coordinates: dict[str, Coordinates] = {}
    if isinstance(node, Map):
        items = [(Scalar(node.key_mark(name), value.path, name), value) for name, value in node]
    else:
        items = [(item, None) for item in r.sequence(node, "a list of region names, or a mapping of "
                                                           "region: {latitude, longitude}")]
    for name_node, value in items:
        name = r.string(name_node)
        if name is None or not r.label(name_node, name, "region"):
            continue
        if name in regions:
            r.fail(name_node, f"region {name!r} is listed twice")
        regions.append(name)
        if value is not None and not (isinstance(value, Scalar) and value.value is None):
            where = r.mapping(value, keys.COORDINATES, required=keys.COORDINATES,
                              what="{latitude: DEGREES, longitude: DEGREES} (or nothing)")
            if where is not None:
                latitude = r.scalar(where.get("latitude"), _degrees(90), "a latitude from -90 to 90")
                longitude = r.scalar(where.get("longitude"), _degrees(180), "a longitude from -180 to 180")
                if latitude is not None and longitude is not None:
                    coordinates[name] = Coordinates(latitude, longitude)
    return coordinates


def _geoip(r: Reader, node: Node | None, known: set[str], coordinates: dict[str, Coordinates]
           ) -> GeoIPSettings | None:
    """clients.geoip: the database file and the country and continent tables (code: region)."""
    m = r.mapping(node, keys.GEOIP, required=("database",))
    if m is None:
        return None
    database_node = m.get("database")
    database = r.file_name(database_node)
    tables: dict[str, dict[str, str]] = {}
    for key, valid, expected in (("countries", _is_country_code, "a two-letter ISO 3166 country code like JP"),
                                 ("continents", CONTINENT_CODES.__contains__,
                                  f"a continent code ({', '.join(CONTINENT_CODES)})")):
        table: dict[str, str] = {}
        for code, region_node in r.mapping(m.get(key), open_keys=True, what="a mapping of code: region") or ():
            region = r.string(region_node)
            if not valid(code):
                r.fail(Scalar(m.get(key).key_mark(code), region_node.path, code), f"expected {expected}, got {code!r}")
            elif region is not None and region not in known:
                unknown_region(r, region_node, region, known, f"{key} {code}:")
            elif region is not None:
                table[code] = region
        tables[key] = table
    if not coordinates and not tables["countries"] and not tables["continents"]:
        r.fail(m, "a GeoIP database places clients by distance to the regions' coordinates, and none has "
                  "any: give regions as a mapping of region: {latitude, longitude} (or add countries/continents)")
    if database is None or database_node is None:
        return None
    return GeoIPSettings(database=database, countries=frozen_map(tables["countries"]),
                         continents=frozen_map(tables["continents"]), mark=str(database_node.mark))


def _is_country_code(code: str) -> bool:
    return len(code) == 2 and code.isascii() and code.isalpha() and code.isupper()


def _degrees(limit: float):
    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -limit <= value <= limit:
            raise ValueError()
        return float(value)
    return convert


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
