"""Client regions from a GeoIP database (the MaxMind DB format of GeoLite2/GeoIP2, DB-IP and IPinfo):
the database compiled once per load into sorted address ranges, each holding the region its records
place clients in, so that a query costs one short bisect; and, for explain, one client's record.

Why the search tree is walked here: maxminddb's own network iterator decodes every network's full
record (about 20 microseconds each with City records: over a minute for GeoLite2 City's 3.5 million
networks). The tree is a plain array of node records (MaxMind DB spec, "Search Tree Section"), and
the records are shared, so walking it ourselves and decoding each distinct record once through
maxminddb (Reader.get) compiles the same database in a few seconds. tests/test_geoip.py checks the
walk against maxminddb's iterator for every record size."""
from __future__ import annotations

import bisect
import ipaddress
import math
import mmap
import os
import sys
import time
from array import array
from dataclasses import dataclass
from typing import Iterator

import maxminddb

from dnsd.model import GeoIPSettings, Topology

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
INDEX_BITS = 16  # the bisect is bounded by an index of at most 2**16 chunks per family (see _Frozen)
METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
COUNTRY_TABLE, CONTINENT_TABLE, NEAREST = "country table", "continent table", "nearest region"


class GeoIPError(Exception):
    """The database cannot be used (missing, unreadable, corrupt, or holding no locations). The text
    is located like a config problem: `file:line:column: clients.geoip.database: what`."""


def _problem(settings: GeoIPSettings, message: str) -> GeoIPError:
    return GeoIPError(f"{settings.mark or '<config>'}: clients.geoip.database: {message}")


# -- what a record says ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Place:
    """Where a record puts its network: any of these may be unknown."""

    country: str | None  # ISO 3166 code
    continent: str | None  # AF AN AS EU NA OC SA
    latitude: float | None
    longitude: float | None

    def describe(self) -> str:
        parts = [f"country {self.country or '?'}", f"continent {self.continent or '?'}"]
        if self.latitude is not None and self.longitude is not None:
            parts.append(f"at {self.latitude:g}, {self.longitude:g}")
        else:
            parts.append("no coordinates")
        return ", ".join(parts)


def place_of(record: object) -> Place | None:
    """The place of a record in MaxMind's schema (GeoIP2/GeoLite2, DB-IP: nested `country.iso_code`,
    `continent.code`, `location.latitude`) or IPinfo's flat one (`country_code` or `country`,
    `continent_code` or `continent`, `lat`/`lng` or `latitude`/`longitude`); None when it has none."""
    if not isinstance(record, dict):
        return None
    country = _code(_get(record, "country", "iso_code")) or _code(_get(record, "registered_country", "iso_code")) \
        or _code(record.get("country_code")) or _code(record.get("country"))
    continent = _code(_get(record, "continent", "code")) or _code(record.get("continent_code")) \
        or _code(record.get("continent"))
    latitude = _number(_get(record, "location", "latitude"), 90) \
        if isinstance(record.get("location"), dict) else _number(record.get("latitude", record.get("lat")), 90)
    longitude = _number(_get(record, "location", "longitude"), 180) \
        if isinstance(record.get("location"), dict) else _number(record.get("longitude", record.get("lng")), 180)
    if latitude is None or longitude is None:
        latitude = longitude = None
    if country is None and continent is None and latitude is None:
        return None
    return Place(country, continent, latitude, longitude)


def _get(record: dict, outer: str, inner: str) -> object:
    value = record.get(outer)
    return value.get(inner) if isinstance(value, dict) else None


def _code(value: object) -> str | None:
    return value.upper() if isinstance(value, str) and len(value) == 2 and value.isascii() else None


def _number(value: object, limit: float) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -limit <= value <= limit:
        return None
    return float(value)


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance in km between two (latitude, longitude) points in degrees (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class RegionChooser:
    """A place's region: its country's in the country table, else its continent's in the continent
    table, else the nearest region with coordinates; None when none of these applies."""

    def __init__(self, topology: Topology):
        settings = topology.geoip
        assert settings is not None
        self.regions = topology.regions
        index = {name: i for i, name in enumerate(self.regions)}
        self.countries = {code: index[region] for code, region in settings.countries.items()}
        self.continents = {code: index[region] for code, region in settings.continents.items()}
        self.points = [(index[name], (where.latitude, where.longitude))
                       for name, where in topology.coordinates.items() if name in index]
        self.points.sort()  # ties go to the region listed first

    def choose(self, place: Place) -> tuple[int, str] | None:
        """(region index, how it was decided), or None."""
        if place.country in self.countries:
            return self.countries[place.country], COUNTRY_TABLE
        if place.continent in self.continents:
            return self.continents[place.continent], CONTINENT_TABLE
        if place.latitude is None or not self.points:
            return None
        where = (place.latitude, place.longitude)
        return min(self.points, key=lambda point: great_circle_km(where, point[1]))[0], NEAREST

    def distances(self, place: Place) -> list[tuple[str, float]]:
        """(region, km) for each region with coordinates, nearest first."""
        if place.latitude is None:
            return []
        where = (place.latitude, place.longitude)
        return sorted(((self.regions[i], great_circle_km(where, point)) for i, point in self.points),
                      key=lambda item: item[1])


# -- the search tree ------------------------------------------------------------------------------

def _tree_records(buffer: bytes | mmap.mmap, tree_size: int, node_count: int, record_size: int) -> memoryview:
    """Every node's two records (left, right) as native unsigned 32-bit ints, rearranged from the
    file's big-endian 24/28/32-bit layout by C-speed strided slice copies straight from the file's
    buffer (a Python loop would take seconds; a copy of the whole tree first, memory)."""
    out = bytearray(8 * node_count)
    # position of each big-endian byte (most significant first) in a native 4-byte int
    at = (0, 1, 2, 3) if sys.byteorder == "big" else (3, 2, 1, 0)
    if record_size == 24:  # a node: 3 bytes left, 3 bytes right
        for k in range(3):
            out[at[k + 1]::4] = buffer[k:tree_size:3]
    elif record_size == 28:  # 3 bytes left, a byte of two nibbles (left's, right's top 4 bits), 3 bytes right
        out[at[0]::8] = buffer[3:tree_size:7].translate(bytes(b >> 4 for b in range(256)))
        out[4 + at[0]::8] = buffer[3:tree_size:7].translate(bytes(b & 15 for b in range(256)))
        for k in range(3):
            out[at[k + 1]::8] = buffer[k:tree_size:7]
            out[4 + at[k + 1]::8] = buffer[4 + k:tree_size:7]
    elif record_size == 32:
        for k in range(4):
            out[at[k]::4] = buffer[k:tree_size:4]
    else:
        raise ValueError(f"record size {record_size} (the format has 24, 28 and 32)")
    return memoryview(out).cast("I")


def tree_leaves(buffer: bytes | mmap.mmap, metadata) -> Iterator[tuple[int, int, int, int]]:
    """(bits, first address, prefix length, data offset) of every network with a record, in address
    order: IPv4 networks (bits 32) first, from the ::/96 subtree of an IPv6 database, then IPv6. The
    aliases of IPv4 inside IPv6 (::ffff:0:0/96, 2002::/16, ...) are skipped, as maxminddb does.
    ValueError when the tree is inconsistent (a corrupt file)."""
    nodes, record_size = metadata.node_count, metadata.record_size
    tree_size = nodes * record_size // 4
    data_end = buffer.rfind(METADATA_MARKER) - tree_size - 16  # size of the data section
    if tree_size + 16 > len(buffer) or data_end < 0:
        raise ValueError(f"the search tree ({nodes} nodes) does not fit in the file ({len(buffer)} bytes)")
    records = _tree_records(buffer, tree_size, nodes, record_size)
    bits = 128 if metadata.ip_version == 6 else 32
    alias = -1  # the node of ::/96 in an IPv6 database, which aliases of IPv4 point at too
    if bits == 128:
        node = 0
        for _ in range(96):
            if node >= nodes:
                break
            node = records[2 * node]
        alias = node if 0 < node < nodes else -1
    if nodes == 0:
        return
    limit = 2 * nodes + 2  # a tree visits each node once; more means a cycle
    visits = 0
    stack = [(0, 0, 0)]  # (node, depth, prefix value so far)
    pop, push = stack.pop, stack.append
    while stack:  # depth first, the left (lower) half first: pushed last, popped first
        node, depth, prefix = pop()
        if node > nodes:  # a record: the network prefix/depth has data
            offset = node - nodes - 16
            if offset >= data_end:
                raise ValueError(f"a record points past the data section ({offset} >= {data_end})")
            yield from _leaf(bits, depth, prefix, offset)
            continue
        visits += 1
        if visits > limit or depth >= bits:
            raise ValueError("the search tree is deeper than an address or loops")
        depth += 1
        prefix <<= 1
        right, left = records[2 * node + 1], records[2 * node]
        if right != nodes and right != alias:  # nodes: no data; a right child is never on ::/96's path
            push((right, depth, prefix | 1))
        if left != nodes and not (left == alias and prefix):
            push((left, depth, prefix))


def _leaf(bits: int, depth: int, prefix: int, offset: int) -> Iterator[tuple[int, int, int, int]]:
    first = prefix << (bits - depth)
    if bits == 128 and first < (1 << 32):  # inside ::/96: IPv4 (or a network holding all of IPv4)
        if depth >= 96:
            yield 32, first, depth - 96, offset
            return
        yield 32, 0, 0, offset
    yield bits, first, depth, offset


# -- the compiled table ---------------------------------------------------------------------------
# Values are the network indices of dnsd.answers.tables.CompiledZone: a client network written by hand
# is its index i (0..N-1), no placement is N (default_region), GeoIP region r is N + 1 + r.

class _Ranges:
    """One family's address space cut into ranges: starts[i] is the first address of range i (starts[0]
    is 0), values[i] its value; adjacent ranges never share a value. Kept in arrays (4 bytes per IPv4
    start, 8 per IPv6 start: the top 64 bits, as long as every start is a /64's), not lists of ints,
    so millions of ranges stay tens of MB, also while they are built."""

    def __init__(self, bits: int, empty: int):
        self.bits = bits
        self.empty = empty  # the value of addresses in no network
        self.drop = 64 if bits == 128 else 0  # low bits not stored
        self.starts: array | list = array("I" if bits == 32 else "Q", [0])
        self.values = array("i", [empty])
        self.end = 0  # one past the last address added

    def start(self, i: int) -> int:
        return self.starts[i] << self.drop

    def _append(self, first: int, value: int) -> None:
        if first & ((1 << self.drop) - 1):  # an IPv6 start inside a /64: keep whole addresses from now on
            self.starts = [start << self.drop for start in self.starts]
            self.drop = 0
        self.starts.append(first >> self.drop)
        self.values.append(value)

    def add(self, first: int, last: int, value: int) -> None:
        """The addresses first..last (in order, after every earlier one) hold `value`."""
        if first > self.end and self.values[-1] != self.empty:
            self._append(self.end, self.empty)
        if value != self.values[-1]:
            if first == 0:  # the first range takes the value
                self.values[-1] = value
            else:
                self._append(first, value)
        self.end = last + 1

    def finish(self) -> _Ranges:
        if self.end < (1 << self.bits) and self.values[-1] != self.empty:
            self._append(self.end, self.empty)
        self.end = 1 << self.bits
        return self


def _overlay(base: _Ranges, networks: list[tuple[int, int, int]]) -> _Ranges:
    """base with client networks written by hand laid over it, (first, last, index) each, the longest
    prefix winning where they nest: those addresses take the network's index, whatever the database."""
    top = 1 << base.bits
    bounds = sorted({0} | {first for first, _, _ in networks} | {last + 1 for _, last, _ in networks if last + 1 < top})
    by_size = sorted(networks, key=lambda n: n[1] - n[0])  # the smallest network first: the longest prefix
    hand = [next((index for first, last, index in by_size if first <= bound <= last), None) for bound in bounds]
    out = _Ranges(base.bits, base.empty)
    at = i = h = 0
    while at < top:  # both partitions in step: each piece takes the hand-written value, else the base's
        base_end = base.start(i + 1) if i + 1 < len(base.starts) else top
        hand_end = bounds[h + 1] if h + 1 < len(bounds) else top
        following = min(base_end, hand_end)
        out.add(at, following - 1, base.values[i] if hand[h] is None else hand[h])
        i += following == base_end
        h += following == hand_end
        at = following
    return out


class _Frozen:
    """_Ranges ready for lookups. An index cuts the window from the first start after 0 to the last one
    into at most 2**INDEX_BITS equal chunks (fewer for few ranges: about 8 ranges a chunk) and holds
    the range of each chunk's first address, one more entry at the end: the ranges of chunk c are
    index[c] .. index[c + 1], so the bisect takes the same few steps, through a few adjacent cache
    lines, whatever the size of the database and however its networks cluster (all IPv6 networks
    lie in 2000::/3)."""

    __slots__ = ("starts", "values", "index", "low", "shift", "size", "drop", "masks")

    def __init__(self, ranges: _Ranges):
        stored = ranges.bits - ranges.drop
        self.starts, self.drop = ranges.starts, ranges.drop
        # the smallest type that holds every value: a byte each with fewer than 256 networks and regions
        # (memory, and the CPU caches the lookups hit)
        largest = max(ranges.values)
        self.values = array("B" if largest < 256 else "H" if largest < 65536 else "i", ranges.values)
        starts = self.starts
        last = len(starts) - 1
        self.low = starts[1] if last else 0
        self.size = 1 << min(INDEX_BITS, (len(starts) // 8).bit_length())  # chunks
        self.shift = max(0, (starts[last] - self.low).bit_length() - (self.size.bit_length() - 1))
        self.index = array("I", bytes(4 * (self.size + 1)))  # at most 256 KB: stays in the CPU's caches
        i = 0
        for chunk in range(self.size):
            first = self.low + (chunk << self.shift)
            while i < last and starts[i + 1] <= first:
                i += 1
            self.index[chunk] = i
        self.index[self.size] = last
        # one more start past the ranges, the largest storable, so the ECS check needs no bounds test: only
        # a subnet ending at the very last address (255.255.255.x, ffff:ffff:ffff:ffff::) is taken as across
        starts.append(1 << ranges.bits if isinstance(starts, list) else (1 << (8 * starts.itemsize)) - 1)
        # host bits of an ECS /prefix, in stored units (a subnet inside a /64 is inside one stored start)
        self.masks = tuple((1 << max(0, stored - prefix)) - 1 for prefix in range(ranges.bits + 1))

    def parts(self) -> tuple:
        """What lookup needs, in one tuple (one unpack per lookup instead of an attribute load per part)."""
        return self.starts, self.index, self.low, self.shift, self.size, self.masks, self.values, self.drop

    def nbytes(self) -> int:
        starts = (self.starts.itemsize * len(self.starts) if isinstance(self.starts, array)
                  else sys.getsizeof(self.starts) + sum(sys.getsizeof(start) for start in self.starts))
        return starts + self.values.itemsize * len(self.values) + self.index.itemsize * len(self.index)

    def __len__(self) -> int:
        return len(self.values)  # ranges (starts holds one more: the sentinel)


def file_identity(path: str) -> tuple[int, int, int, int] | None:
    """What tells a changed file from the one loaded: device, inode, size, mtime; None when missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _settings_key(topology: Topology) -> tuple:
    """Everything a compiled table depends on besides the file's content."""
    settings = topology.geoip
    assert settings is not None
    return (settings.database, tuple(sorted(settings.countries.items())), tuple(sorted(settings.continents.items())),
            tuple(sorted((name, (c.latitude, c.longitude)) for name, c in topology.coordinates.items())),
            topology.client_networks, topology.regions)


@dataclass(frozen=True, slots=True)
class GeoStats:
    """What the load found and cost: shown by check-config, the reload's changes, logs and /metrics."""

    database_type: str
    build_epoch: int  # when the database was made (its metadata), seconds since the epoch
    networks: int  # networks with a record
    records: int  # distinct records among them
    located: int  # records that place their networks in a region
    ranges_v4: int  # ranges of the compiled map (adjacent networks of one region merged)
    ranges_v6: int
    compile_seconds: float
    table_bytes: int  # memory of the compiled map

    def describe(self) -> str:
        return (f"{self.database_type}, {self.networks:,} networks ({self.records:,} records, {self.located:,} "
                f"placed) -> {self.ranges_v4:,} IPv4 + {self.ranges_v6:,} IPv6 ranges, "
                f"{self.table_bytes / 2**20:.1f} MiB, compiled in {self.compile_seconds:.2f} s")


class GeoTable:
    """The client networks written by hand and a GeoIP database, compiled for one topology into one map
    of address ranges: a client's network index (see above) with one bounded bisect per query."""

    def __init__(self, path: str, key: tuple, identity: tuple | None, v4: _Frozen, v6: _Frozen, stats: GeoStats):
        self.path = path
        self.key = key
        self.identity = identity
        self._v4 = v4.parts()
        self._v6 = v6.parts()
        self.stats = stats

    def lookup(self, bits: int, address: int, source_prefix: int | None = None) -> int | None:
        """The network index of an address (a client network, default, or a GeoIP region's). With an
        ECS source prefix, None when the subnet the client revealed does not lie in one range (a /16
        across two regions): the caller then asks the client networks alone, as without a database."""
        starts, index, low, shift, size, masks, values, drop = self._v4 if bits == 32 else self._v6
        address >>= drop
        if address < low:
            i = 0
        else:
            chunk = (address - low) >> shift
            i = bisect.bisect_right(starts, address, index[chunk], index[chunk + 1] + 1) - 1 if chunk < size \
                else len(values) - 1
        if source_prefix is not None and address | masks[source_prefix] >= starts[i + 1]:  # a sentinel ends starts
            return None
        return values[i]

    def reusable_for(self, topology: Topology) -> bool:
        """The same file, unchanged on disk, and the same settings: a reload may keep this table."""
        return topology.geoip is not None and _settings_key(topology) == self.key \
            and file_identity(self.path) == self.identity


def load(topology: Topology) -> GeoTable:
    """Read and compile topology.geoip's database, with topology.client_networks over it. GeoIPError
    when it cannot be used."""
    settings = topology.geoip
    assert settings is not None
    started = time.perf_counter()
    path = settings.database
    identity = file_identity(path)
    if os.path.isdir(path):
        raise _problem(settings, f"{path}: is a directory, not a database file")
    try:
        reader = maxminddb.open_database(path)
    except FileNotFoundError:
        raise _problem(settings, f"{path}: no such file") from None
    except OSError as err:
        raise _problem(settings, f"{path}: cannot read: {err.strerror or err}") from None
    except (maxminddb.InvalidDatabaseError, ValueError) as err:
        raise _problem(settings, f"{path}: not a MaxMind DB file ({err})") from None
    try:
        return _compile(reader, path, identity, topology, started)
    except (maxminddb.InvalidDatabaseError, ValueError, IndexError) as err:  # ValueError: also bad UTF-8
        raise _problem(settings, f"{path}: corrupt database: {err}") from None
    finally:
        reader.close()


def _compile(reader, path: str, identity: tuple | None, topology: Topology, started: float) -> GeoTable:
    settings = topology.geoip
    metadata = reader.metadata()
    chooser = RegionChooser(topology)
    default = len(topology.client_networks)
    families = {32: _Ranges(32, default), 128: _Ranges(128, default)}
    decided: dict[int, int] = {}  # data offset -> network index
    networks = located = with_place = 0
    with open(path, "rb") as file:
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            for bits, first, length, offset in tree_leaves(buffer, metadata):
                networks += 1
                value = decided.get(offset)
                if value is None:
                    address = ipaddress.IPv4Address(first) if bits == 32 else ipaddress.IPv6Address(first)
                    place = place_of(reader.get(address))
                    choice = chooser.choose(place) if place is not None else None
                    value = decided[offset] = default + 1 + choice[0] if choice is not None else default
                    located += choice is not None
                    with_place += place is not None
                families[bits].add(first, first + (1 << (bits - length)) - 1, value)
    if networks == 0:
        raise _problem(settings, f"{path}: the database holds no networks")
    if not with_place:
        raise _problem(settings, f"{path}: no location data: none of its {len(decided):,} records has a country, "
                                 f"continent or coordinates (database type {metadata.database_type}); "
                                 "clients.geoip needs a City or Country database")
    if not located:
        raise _problem(settings, f"{path}: no record places a client in a region: its {with_place:,} records "
                                 "with a location have no coordinates (a Country database?), and none of their "
                                 "countries or continents is in clients.geoip.countries or continents")
    frozen = {}
    for bits, ranges in families.items():
        hand = [(int(cn.network.network_address), int(cn.network.broadcast_address), index)
                for index, cn in enumerate(topology.client_networks) if cn.network.max_prefixlen == bits]
        ranges.finish()
        frozen[bits] = _Frozen(_overlay(ranges, hand).finish() if hand else ranges)
    stats = GeoStats(database_type=metadata.database_type, build_epoch=metadata.build_epoch, networks=networks,
                     records=len(decided), located=located, ranges_v4=len(frozen[32]),
                     ranges_v6=len(frozen[128]), compile_seconds=time.perf_counter() - started,
                     table_bytes=frozen[32].nbytes() + frozen[128].nbytes())
    return GeoTable(path, _settings_key(topology), identity, frozen[32], frozen[128], stats)


# -- explain --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RecordLookup:
    """One address's record, as explain shows it."""

    network: str  # the record's network, e.g. 198.51.100.0/24
    place: Place | None
    region: str | None  # where the record places the client (before any ECS-prefix rule)
    how: str | None  # COUNTRY_TABLE, CONTINENT_TABLE, NEAREST
    distances: tuple[tuple[str, float], ...]  # (region, km), nearest first


def look_up_record(topology: Topology, address: str) -> RecordLookup | None:
    """The record of one address, read from the database file now (None: no record). GeoIPError when
    the file cannot be read."""
    settings = topology.geoip
    assert settings is not None
    try:
        with maxminddb.open_database(settings.database) as reader:
            record, length = reader.get_with_prefix_len(address)
    except (OSError, maxminddb.InvalidDatabaseError, ValueError) as err:
        raise GeoIPError(f"{settings.database}: {err}") from None
    if record is None:
        return None
    network = ipaddress.ip_network(f"{address}/{length}", strict=False)
    place = place_of(record)
    chooser = RegionChooser(topology)
    choice = chooser.choose(place) if place is not None else None
    return RecordLookup(str(network), place, topology.regions[choice[0]] if choice else None,
                        choice[1] if choice else None, tuple(chooser.distances(place)) if place else ())
