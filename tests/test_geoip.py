"""Client location from a GeoIP database (clients.geoip): the test database and its script, the search-tree
walk against maxminddb's own, the compiled ranges, the region rules (tables, distance, hand-written
networks, default), broken files in check-config and on reload, explain, metrics, and the real server
answering dig with ECS, IPv6 too, and picking up a new database file by itself."""
from __future__ import annotations

import copy
import dataclasses
import ipaddress
import mmap
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import maxminddb
import pytest
import yaml

from dnsd.cli import main as dnsd_main
from dnsd.config import ConfigError, load_config, parse_config_text, read_document
from dnsd.model import ClientNetwork, Coordinates, GeoIPSettings, Topology
from dnsd.ops.explain import client_context, explain
from dnsd.ops.metrics import make_registry, render
from dnsd.routing import geoip
from dnsd.routing.netmatch import PrefixMatcher
from dnsd.serving.runtime import QueryEngine, new_snapshot
from dnsd.serving.service import Dnsd
from tests import harness
from tests.dnstest import EXAMPLE, ROOT, addresses_in, ask
from tests.test_integration import answer_lines, dig

GEOIP_CONFIG = ROOT / "config" / "geoip.yaml"
TEST_DB = ROOT / "config" / "geoip-test.mmdb"
SCRIPT = ROOT / "scripts" / "make-geoip-test-db"
REPLICA_ADDRESS = {"eastus": "127.0.0.11", "westeurope": "127.0.0.12", "southeastasia": "127.0.0.13"}
GLOBAL = "contoso.azurecr.test"


def city(country: str, continent: str, latitude: float | None = None, longitude: float | None = None) -> dict:
    record = {"country": {"iso_code": country}, "continent": {"code": continent}}
    if latitude is not None:
        record["location"] = {"latitude": latitude, "longitude": longitude, "accuracy_radius": 20}
    return record


TOKYO, FRANKFURT, WASHINGTON = city("JP", "AS", 35.68, 139.69), city("DE", "EU", 50.11, 8.68), \
    city("US", "NA", 38.9, -77.0)


def write_db(path: Path, networks, ip_version: int = 6, record_size: int | None = None,
             database_type: str = "test-City") -> Path:
    """A database with these (network, record) pairs, by mmdb-writer; record_size forces the tree's."""
    import mmdb_writer
    from netaddr import IPSet

    writer = mmdb_writer.MMDBWriter(ip_version=ip_version, ipv4_compatible=ip_version == 6,
                                    database_type=database_type)
    for network, record in networks:
        writer.insert_network(IPSet([network]), record)
    if record_size is None:
        writer.to_db_file(str(path))
        return path
    original = mmdb_writer.TreeWriter._adjust_record_size

    def forced(self):  # mmdb-writer picks the smallest size that fits: force a larger one (internal API)
        original(self)
        self.record_size = record_size
        self.data_offset = record_size * 2 / 8 * self._node_counter
    mmdb_writer.TreeWriter._adjust_record_size = forced
    try:
        writer.to_db_file(str(path))
    finally:
        mmdb_writer.TreeWriter._adjust_record_size = original
    return path


def geoip_dict(database: str | Path = TEST_DB, **clients) -> dict:
    """config/geoip.yaml as data, with its database (an absolute path) and `clients.geoip` keys changed."""
    data = read_document(GEOIP_CONFIG)
    data["clients"]["geoip"] = {**data["clients"]["geoip"], "database": str(database), **clients}
    return data


def topology_with(settings: GeoIPSettings) -> Topology:
    """config/geoip.yaml's topology (regions, coordinates) with these GeoIP settings."""
    return dataclasses.replace(load_config(GEOIP_CONFIG).topology, geoip=settings)


def engine_for(data: dict) -> QueryEngine:
    return QueryEngine(new_snapshot(parse_config_text(yaml.safe_dump(data, sort_keys=False), "geoip.yaml")))


def replica_for(engine: QueryEngine, **asked) -> str:
    addresses = addresses_in(ask(engine, GLOBAL, **asked))
    return next(name for name, address in REPLICA_ADDRESS.items() if {address} == addresses)


# -- the test database and its script ---------------------------------------------------------------

def content(path: Path) -> tuple:
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
        return (meta.database_type, meta.ip_version, meta.build_epoch, meta.languages, meta.description,
                [(str(network), record) for network, record in reader])


def test_the_script_writes_the_committed_database(tmp_path):
    written = tmp_path / "geoip-test.mmdb"
    run = subprocess.run([sys.executable, str(SCRIPT), str(written)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert content(written) == content(TEST_DB)
    assert TEST_DB.stat().st_size < 8192  # a few KB in the repository


def test_the_committed_database_holds_the_issue_networks():
    with maxminddb.open_database(str(TEST_DB)) as reader:
        places = {str(network): geoip.place_of(record) for network, record in reader}
    assert places == {
        "198.51.100.0/24": geoip.Place("JP", "AS", 35.68, 139.69), "2001:db8:1::/48": geoip.Place("JP", "AS", 35.68, 139.69),
        "192.0.2.0/24": geoip.Place("DE", "EU", 50.11, 8.68), "2001:db8:2::/48": geoip.Place("DE", "EU", 50.11, 8.68),
        "203.0.113.0/24": geoip.Place("US", "NA", 38.9, -77.0), "2001:db8:3::/48": geoip.Place("US", "NA", 38.9, -77.0),
        "198.18.0.0/24": geoip.Place("AU", "OC", None, None),
    }


def test_the_geoip_example_is_the_example_with_its_own_regions_and_clients():
    geo, example = read_document(GEOIP_CONFIG), read_document(EXAMPLE)
    for data in (geo, example):
        for key in ("regions", "clients"):
            data.pop(key)
    assert geo == example


def test_check_config_passes_the_geoip_example(capsys):
    assert dnsd_main(["check-config", str(GEOIP_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "geoip: geotm-test-GeoLite2-City, 7 networks (4 records, 4 placed)" in out


# -- the search tree --------------------------------------------------------------------------------

MIXED = [("1.0.0.0/24", TOKYO), ("1.0.1.0/25", FRANKFURT), ("1.0.1.128/25", TOKYO), ("9.9.9.9/32", WASHINGTON),
         ("128.0.0.0/1", FRANKFURT), ("2001:db8::/32", TOKYO), ("2001:db8:5::/48", WASHINGTON),
         ("2c0f::/16", FRANKFURT), ("ffff::/16", TOKYO)]


@pytest.mark.parametrize("ip_version,record_size", [(6, 24), (6, 28), (6, 32), (4, 24), (4, 28), (4, 32)])
def test_the_tree_walk_finds_what_maxminddb_iterates(tmp_path, ip_version, record_size):
    networks = [(n, r) for n, r in MIXED if ip_version == 6 or ":" not in n]
    path = write_db(tmp_path / "mixed.mmdb", networks, ip_version, record_size)
    with maxminddb.open_database(str(path)) as reader, open(path, "rb") as file, \
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        assert reader.metadata().record_size == record_size
        leaves = list(geoip.tree_leaves(buffer, reader.metadata()))
        walked = [(str(ipaddress.ip_network((first, length))), offset) for _, first, length, offset in leaves]
        iterated = [(str(network), record) for network, record in reader]
        assert [network for network, _ in walked] == [network for network, _ in iterated]
        by_offset = {}
        for (network, offset), (_, record) in zip(walked, iterated):  # one offset, one record
            assert by_offset.setdefault(offset, record) == record, network


def test_a_tree_pointing_past_its_data_is_corrupt(tmp_path):
    path = write_db(tmp_path / "db.mmdb", [("192.0.2.0/24", TOKYO)], 4)
    data = bytearray(path.read_bytes())
    data[0:3] = b"\xff\xff\xf0"  # the root's left record: far past the data section
    path.write_bytes(bytes(data))
    with maxminddb.open_database(str(path)) as reader, open(path, "rb") as file, \
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        with pytest.raises(ValueError, match="past the data section"):
            list(geoip.tree_leaves(buffer, reader.metadata()))


# -- places, distances, regions -------------------------------------------------------------------

@pytest.mark.parametrize("record,place", [
    (TOKYO, geoip.Place("JP", "AS", 35.68, 139.69)),
    ({"country": {"iso_code": "AU"}, "continent": {"code": "OC"}}, geoip.Place("AU", "OC", None, None)),  # Country DB
    ({"registered_country": {"iso_code": "FR"}, "continent": {"code": "EU"}}, geoip.Place("FR", "EU", None, None)),
    ({"country_code": "BR", "continent_code": "SA", "lat": "-23.5", "lng": "-46.6"},  # IPinfo's flat layout
     geoip.Place("BR", "SA", -23.5, -46.6)),
    ({"country": "in", "continent": "AS"}, geoip.Place("IN", "AS", None, None)),
    ({"location": {"latitude": 95.0, "longitude": 10.0}, "country": {"iso_code": "NO"}},
     geoip.Place("NO", None, None, None)),  # coordinates out of range: none
    ({"autonomous_system_number": 64500, "autonomous_system_organization": "Example"}, None),  # an ASN record
    ("not a map", None),
])
def test_place_of_a_record(record, place):
    assert geoip.place_of(record) == place


@pytest.mark.parametrize("a,b,km", [
    ((35.68, 139.69), (1.28, 103.83), 5320),   # Tokyo - Singapore
    ((51.51, -0.13), (40.71, -74.01), 5570),   # London - New York
    ((0.0, 179.5), (0.0, -179.5), 111),        # across the antimeridian
    ((10.0, 10.0), (10.0, 10.0), 0),
])
def test_great_circle_distance(a, b, km):
    assert geoip.great_circle_km(a, b) == pytest.approx(km, abs=10)


@pytest.mark.parametrize("countries,continents,place,expected", [
    ({}, {}, geoip.Place("DE", "EU", 50.11, 8.68), ("westeurope", geoip.NEAREST)),
    ({"DE": "southeastasia"}, {}, geoip.Place("DE", "EU", 50.11, 8.68), ("southeastasia", geoip.COUNTRY_TABLE)),
    ({}, {"EU": "eastus"}, geoip.Place("DE", "EU", 50.11, 8.68), ("eastus", geoip.CONTINENT_TABLE)),
    ({"DE": "southeastasia"}, {"EU": "eastus"}, geoip.Place("DE", "EU", 50.11, 8.68),
     ("southeastasia", geoip.COUNTRY_TABLE)),                              # the country before the continent
    ({}, {}, geoip.Place("AU", "OC", None, None), None),                   # no coordinates, no table entry
    ({}, {"OC": "southeastasia"}, geoip.Place("AU", "OC", None, None), ("southeastasia", geoip.CONTINENT_TABLE)),
])
def test_the_region_of_a_place(countries, continents, place, expected):
    topology = topology_with(GeoIPSettings("unused.mmdb", countries, continents))
    chooser = geoip.RegionChooser(topology)
    choice = chooser.choose(place)
    assert (None if choice is None else (topology.regions[choice[0]], choice[1])) == expected


# -- the compiled table -----------------------------------------------------------------------------

RANGES_DB = [("10.0.0.0/25", TOKYO), ("10.0.0.128/25", city("KR", "AS", 37.57, 126.98)),  # both southeastasia
             ("10.0.1.0/24", FRANKFURT), ("10.0.3.0/24", WASHINGTON), ("10.0.4.0/24", city("XX", "AN")),
             ("2001:db8:a::/48", TOKYO), ("2001:db8:b::/48", TOKYO)]
HAND_WRITTEN = {"10.0.1.128/25": "eastus", "10.0.8.0/21": "westeurope", "10.0.9.0/24": "southeastasia"}


@pytest.fixture(scope="module")
def ranges_database(tmp_path_factory):
    return write_db(tmp_path_factory.mktemp("ranges") / "ranges.mmdb", RANGES_DB)


@pytest.fixture(scope="module")
def ranges_table(ranges_database):
    networks = tuple(ClientNetwork(ipaddress.ip_network(cidr), region) for cidr, region in HAND_WRITTEN.items())
    return geoip.load(dataclasses.replace(topology_with(GeoIPSettings(str(ranges_database))), client_networks=networks))


COMPILED = [
    # (address or ECS subnet, what the map says: a hand-written network, a database region, default, or
    #  None: the subnet lies across ranges)
    ("10.0.0.5", "db southeastasia"), ("10.0.0.200", "db southeastasia"),
    ("10.0.0.0/24", "db southeastasia"),   # two records of one region: merged, so a /24 fits inside
    ("10.0.0.0/23", None),                 # ...but a /23 reaches into westeurope
    ("10.0.1.0/25", "db westeurope"),
    ("10.0.1.200", "10.0.1.128/25"),       # written by hand: wins over the database
    ("10.0.1.0/24", None),                 # database and hand-written
    ("10.0.2.1", "default"),               # a gap: no record
    ("10.0.2.0/23", None),                 # the gap and eastus
    ("10.0.3.255", "db eastus"),
    ("10.0.4.1", "default"),               # a record that places nobody (no coordinates, no table)
    ("10.0.8.1", "10.0.8.0/21"), ("10.0.9.1", "10.0.9.0/24"),  # nested: the longest prefix
    ("10.0.10.0/23", "10.0.8.0/21"),
    ("10.0.8.0/21", None),                 # the /24 inside cuts it: network_of asks the hand-written ones
    ("0.0.0.0/0", None), ("255.255.255.255", "default"),
    ("2001:db8:a::/47", "db southeastasia"),  # two adjacent /48 of one region: one range
    ("2001:db8:8::/46", None), ("2001:db8:b:ffff::1", "db southeastasia"), ("2001:db8:c::1", "default"),
]


@pytest.mark.parametrize("subnet,expected", COMPILED)
def test_compiled_ranges(ranges_table, subnet, expected):
    network = ipaddress.ip_network(subnet)
    found = ranges_table.lookup(network.max_prefixlen, int(network.network_address),
                                network.prefixlen if "/" in subnet else None)
    regions = load_config(GEOIP_CONFIG).topology.regions
    names = [*HAND_WRITTEN, "default", *(f"db {region}" for region in regions)]
    assert (None if found is None else names[found]) == expected


def test_compiled_ranges_are_merged(ranges_table):
    stats = ranges_table.stats
    # IPv4: none, AS (two records), EU, 10.0.1.128/25, none, US, none (the record placing nobody, and on),
    # 10.0.8.0/21, 10.0.9.0/24, 10.0.8.0/21 again, none; IPv6: none, AS (two networks), none
    assert (stats.networks, stats.records, stats.located, stats.ranges_v4, stats.ranges_v6) == (7, 5, 4, 11, 3)


@pytest.mark.parametrize("address,expected", [
    ("2001:db8:a::1", "db southeastasia"), ("2001:db8:a:0:1::5", "2001:db8:a:0:1::/80"),
    ("2001:db8:a:0:2::", "db southeastasia"), ("2001:db8:a::/64", None), ("2001:db8:a:0:1::/96", "2001:db8:a:0:1::/80"),
])
def test_a_network_inside_a_slash_64_keeps_whole_ipv6_addresses(ranges_database, address, expected):
    hand = (ClientNetwork(ipaddress.ip_network("2001:db8:a:0:1::/80"), "westeurope"),)
    table = geoip.load(dataclasses.replace(topology_with(GeoIPSettings(str(ranges_database))), client_networks=hand))
    network = ipaddress.ip_network(address)
    found = table.lookup(128, int(network.network_address), network.prefixlen if "/" in address else None)
    names = ["2001:db8:a:0:1::/80", "default", *(f"db {r}" for r in load_config(GEOIP_CONFIG).topology.regions)]
    assert (None if found is None else names[found]) == expected


@pytest.mark.parametrize("ecs,replica", [("10.0.8.0/21", "westeurope"), ("10.0.1.128/25", "eastus"),
                                         ("10.0.1.0/24", "eastus"),  # across ranges, in no network written by hand
                                         ("10.0.0.0/24", "southeastasia")])
def test_a_subnet_across_ranges_is_placed_by_the_networks_written_by_hand(ranges_database, ecs, replica):
    data = geoip_dict(ranges_database)
    data["clients"]["networks"] = HAND_WRITTEN
    assert replica_for(engine_for(data), ecs=ecs) == replica


# -- routing through the engine ---------------------------------------------------------------------

ROUTED = [
    # (client source address, ECS subnet or None, replica the global name goes to)
    ("127.0.0.1", "198.51.100.0/24", "southeastasia"),   # JP, Tokyo
    ("127.0.0.1", "192.0.2.0/24", "westeurope"),         # DE, Frankfurt
    ("127.0.0.1", "203.0.113.0/24", "eastus"),           # US, Washington
    ("127.0.0.1", "198.51.100.128/25", "southeastasia"),  # inside the record's network
    ("127.0.0.1", "2001:db8:1::/48", "southeastasia"),
    ("127.0.0.1", "2001:db8:2::/56", "westeurope"),
    ("::1", "2001:db8:3::/64", "eastus"),
    ("127.0.0.1", "198.18.0.0/24", "southeastasia"),     # AU: no coordinates; the continent table has OC
    ("198.51.100.7", None, "southeastasia"),              # the source address, without ECS
    ("2001:db8:2::53", None, "westeurope"),
    ("::ffff:192.0.2.9", None, "westeurope"),             # IPv4-mapped: looked up as IPv4
    ("127.0.0.1", "100.64.0.0/24", "eastus"),            # in no record: default_region
    ("127.0.0.1", "10.9.0.0/24", "eastus"),              # a private address
    ("127.0.0.1", "198.51.0.0/16", "eastus"),            # ECS wider than the record: default
    ("127.0.0.1", "2001:db8::/32", "eastus"),
    ("203.0.113.9", "198.51.100.0/24", "southeastasia"),  # ECS from anyone steers routing (not views)
    ("127.0.0.1", None, "eastus"),                        # 127.0.0.0/26 written by hand
]


@pytest.fixture(scope="module")
def geoip_engine():
    return QueryEngine(new_snapshot(load_config(GEOIP_CONFIG)))


@pytest.mark.parametrize("client,ecs,replica", ROUTED, ids=[f"{c}-{e}" for c, e, _ in ROUTED])
def test_the_database_places_clients(geoip_engine, client, ecs, replica):
    assert replica_for(geoip_engine, client=client, ecs=ecs) == replica


def test_an_ecs_answer_is_scoped_to_the_source_prefix(geoip_engine):
    reply = ask(geoip_engine, GLOBAL, client="127.0.0.1", ecs="198.51.100.0/24")
    assert [option.scopelen for option in reply.options] == [24]


TABLES = [
    # (clients.geoip additions, ECS subnet, replica)
    ({"countries": {"DE": "southeastasia"}}, "192.0.2.0/24", "southeastasia"),   # wins over distance
    ({"countries": {"DE": "southeastasia"}}, "2001:db8:2::/48", "southeastasia"),
    ({"continents": {"EU": "eastus"}}, "192.0.2.0/24", "eastus"),
    ({"countries": {"DE": "westeurope"}, "continents": {"EU": "eastus"}}, "192.0.2.0/24", "westeurope"),
    ({"continents": {}}, "198.18.0.0/24", "eastus"),    # AU without a table entry or coordinates: default
    ({"countries": {"AU": "westeurope"}}, "198.18.0.0/24", "westeurope"),
]


@pytest.mark.parametrize("tables,ecs,replica", TABLES)
def test_the_country_and_continent_tables_win_over_distance(tables, ecs, replica):
    assert replica_for(engine_for(geoip_dict(**tables)), ecs=ecs) == replica


@pytest.mark.parametrize("networks,ecs,replica", [
    ({"198.51.100.0/24": "westeurope"}, "198.51.100.0/24", "westeurope"),
    ({"198.51.0.0/16": "eastus"}, "198.51.100.0/24", "eastus"),      # even a shorter prefix
    ({"2001:db8::/32": "westeurope"}, "2001:db8:1::/48", "westeurope"),
    ({"198.51.100.0/24": "westeurope"}, "192.0.2.0/24", "westeurope"),  # the database still places the rest
])
def test_networks_written_by_hand_win_over_the_database(networks, ecs, replica):
    data = geoip_dict()
    data["clients"]["networks"] = networks
    assert replica_for(engine_for(data), ecs=ecs) == replica


def test_a_config_without_geoip_routes_as_before():
    engine = QueryEngine(new_snapshot(load_config(EXAMPLE)))
    assert engine.snapshot.compiled.geo is None
    assert replica_for(engine, ecs="192.0.2.0/24") == "eastus"  # the example's default region


# -- config problems and broken files ---------------------------------------------------------------

CONFIG_PROBLEMS = [
    # (change to config/geoip.yaml's data, the problem)
    (lambda d: d["clients"]["geoip"].pop("database"), "clients.geoip: missing required key 'database'"),
    (lambda d: d["clients"]["geoip"].update(countries={"DE": "mars"}),
     "clients.geoip.countries.DE: countries DE: unknown region 'mars'"),
    (lambda d: d["clients"]["geoip"].update(countries={"Germany": "westeurope"}),
     "expected a two-letter ISO 3166 country code like JP, got 'Germany'"),
    (lambda d: d["clients"]["geoip"].update(continents={"EUROPE": "westeurope"}),
     "expected a continent code (AF, AN, AS, EU, NA, OC, SA), got 'EUROPE'"),
    (lambda d: d["regions"]["eastus"].update(latitude=91), "regions.eastus.latitude: expected a latitude from -90 to 90"),
    (lambda d: d["regions"].update(eastus={"latitude": 1}), "regions.eastus: missing required key 'longitude'"),
    (lambda d: d["regions"]["eastus"].update(altitude=1), "unknown key 'altitude' (allowed: latitude, longitude)"),
    (lambda d: d.update(regions=list(d["regions"])) or d["clients"]["geoip"].update(continents={}),
     "clients.geoip: a GeoIP database places clients by distance to the regions' coordinates, and none has any"),
]


@pytest.mark.parametrize("change,problem", CONFIG_PROBLEMS, ids=[p[:40] for _, p in CONFIG_PROBLEMS])
def test_config_problems(change, problem):
    data = geoip_dict()
    change(data)
    with pytest.raises(ConfigError) as caught:
        parse_config_text(yaml.safe_dump(data, sort_keys=False), "geoip.yaml")
    assert problem in caught.value.render()


def test_regions_as_a_list_still_work_without_geoip():
    data = copy.deepcopy(read_document(EXAMPLE))
    assert load_config(EXAMPLE).topology.coordinates == {}
    data["regions"] = {"eastus": None, "westeurope": {"latitude": 52.37, "longitude": 4.89}, "southeastasia": {}}
    with pytest.raises(ConfigError, match="missing required key 'latitude'"):
        parse_config_text(yaml.safe_dump(data, sort_keys=False))
    data["regions"]["southeastasia"] = None
    topology = parse_config_text(yaml.safe_dump(data, sort_keys=False)).topology
    assert topology.regions == ("eastus", "westeurope", "southeastasia")
    assert dict(topology.coordinates) == {"westeurope": Coordinates(52.37, 4.89)}


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a database at all\n" * 100)


def _truncated(path: Path) -> None:
    path.write_bytes(TEST_DB.read_bytes()[:1000])


def _bad_pointer(path: Path) -> None:
    data = bytearray(TEST_DB.read_bytes())
    data[3:6] = b"\xff\xff\xf0"  # the root's right record (24-bit records): far past the data section
    path.write_bytes(bytes(data))


def _asn(path: Path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--asn", str(path)], check=True, capture_output=True, timeout=60)


def _directory(path: Path) -> None:
    path.mkdir()


BROKEN = [
    ("missing", lambda path: None, "no such file"),
    ("directory", _directory, "is a directory, not a database file"),
    ("garbage", _garbage, "not a MaxMind DB file"),
    ("truncated", _truncated, "not a MaxMind DB file"),
    ("corrupt tree", _bad_pointer, "corrupt database: a record points past the data section"),
    ("ASN database", _asn, "no location data: none of its 2 records has a country, continent or coordinates "
                           "(database type geotm-test-GeoLite2-ASN); clients.geoip needs a City or Country database"),
]


@pytest.mark.parametrize("make,problem", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_check_config_reports_a_broken_database_at_its_line(tmp_path, capsys, make, problem):
    database = tmp_path / "broken.mmdb"
    make(database)
    config = tmp_path / "geoip.yaml"
    config.write_text(yaml.safe_dump(geoip_dict(database), sort_keys=False))
    line = next(number for number, text in enumerate(config.read_text().splitlines(), 1) if "database:" in text)
    assert dnsd_main(["check-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config}:{line}:" in err and f"clients.geoip.database: {database}: {problem}" in err, err


# -- reload -----------------------------------------------------------------------------------------

def replace_file(path: Path, write) -> None:
    """Write a new version beside it and rename it over: what geoipupdate does."""
    fresh = path.with_suffix(".new")
    write(fresh)
    os.replace(fresh, path)


@pytest.fixture
def reloadable(tmp_path):
    database = tmp_path / "geo.mmdb"
    database.write_bytes(TEST_DB.read_bytes())
    config = tmp_path / "geoip.yaml"
    data = geoip_dict(database)
    data["admin"] = {"listen": "off"}
    data["health"] = {}
    data["probes"].pop("state_file")
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config, database


async def test_a_reload_picks_up_a_new_database_and_keeps_an_unchanged_one(reloadable):
    config, database = reloadable
    dnsd = Dnsd(load_config(config))
    table = dnsd.snapshot.compiled.geo
    assert replica_for(dnsd.engine, ecs="198.51.100.0/24") == "southeastasia"
    result = await dnsd.reload(actor="test")
    assert result.ok and dnsd.snapshot.compiled.geo is table  # the same file: not compiled again
    replace_file(database, lambda path: write_db(path, [("198.51.100.0/24", FRANKFURT)]))
    result = await dnsd.reload(actor="test")
    assert result.ok and dnsd.snapshot.compiled.geo is not table
    assert any("geoip database" in change and "1 networks" in change for change in result.changes), result.changes
    assert replica_for(dnsd.engine, ecs="198.51.100.0/24") == "westeurope"


@pytest.mark.parametrize("make,problem", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
async def test_a_reload_with_a_broken_database_keeps_the_old_one(reloadable, make, problem):
    config, database = reloadable
    dnsd = Dnsd(load_config(config))
    table = dnsd.snapshot.compiled.geo
    database.unlink()
    make(database)
    result = await dnsd.reload(actor="test")
    assert not result.ok and len(result.problems) == 1 and problem in result.problems[0]
    assert f"{config}:" in result.problems[0] and "clients.geoip.database" in result.problems[0]
    assert dnsd.snapshot.compiled.geo is table and dnsd.reloads["failed"] == 1
    assert replica_for(dnsd.engine, ecs="198.51.100.0/24") == "southeastasia"


def test_a_changed_file_is_reloaded_once_it_has_settled_and_a_broken_one_once(reloadable):
    config, database = reloadable
    dnsd = Dnsd(load_config(config))
    assert [dnsd.geoip_changed() for _ in range(3)] == [False] * 3
    replace_file(database, lambda path: write_db(path, [("198.51.100.0/24", FRANKFURT)]))
    # the first look sees it change, the next (the same file again) starts the reload; then no more
    assert [dnsd.geoip_changed() for _ in range(4)] == [False, True, False, False]


# -- explain and metrics ----------------------------------------------------------------------------

EXPLAINED = [
    # (client, ECS, the client-region lines)
    ("127.0.0.1", "198.51.100.0/24", [
        "client region: southeastasia (GeoIP database: nearest region)",
        f"  geoip record: 198.51.100.0/24: country JP, continent AS, at 35.68, 139.69 ({TEST_DB})",
        "  distance: southeastasia 5,320 km, westeurope 9,290 km, eastus 10,928 km"]),
    ("127.0.0.1", "2001:db8:2::/56", [
        "client region: westeurope (GeoIP database: nearest region)",
        f"  geoip record: 2001:db8:2::/48: country DE, continent EU, at 50.11, 8.68 ({TEST_DB})",
        "  distance: westeurope 364 km, eastus 6,825 km, southeastasia 10,265 km"]),
    ("127.0.0.1", "198.18.0.0/24", [
        "client region: southeastasia (GeoIP database: continent table OC)",
        f"  geoip record: 198.18.0.0/24: country AU, continent OC, no coordinates ({TEST_DB})"]),
    ("127.0.0.1", "198.51.100.0/23", [
        "client region: eastus (default: in no client network; ECS /23 is wider than the GeoIP record's network "
        "198.51.100.0/24 and the addresses it covers are not all in one region)",
        f"  geoip record: 198.51.100.0/24: country JP, continent AS, at 35.68, 139.69 ({TEST_DB})",
        "  distance: southeastasia 5,320 km, westeurope 9,290 km, eastus 10,928 km"]),
    ("10.9.8.7", None, [
        "client region: eastus (default: in no client network; no GeoIP record for 10.9.8.7)",
        f"  geoip record: none for 10.9.8.7 in {TEST_DB}"]),
    ("127.0.0.5", None, [
        "client region: eastus (client network 127.0.0.0/26)",
        f"  geoip record: none for 127.0.0.5 in {TEST_DB} (not used: client networks win)"]),
]


@pytest.mark.parametrize("client,ecs,lines", EXPLAINED, ids=[f"{c}-{e}" for c, e, _ in EXPLAINED])
def test_explain_shows_the_record_the_distances_and_the_source(geoip_engine, client, ecs, lines):
    _, text = explain(geoip_engine.snapshot, GLOBAL, 1, client_context(client, ecs))
    shown = text.splitlines()
    start = next(i for i, line in enumerate(shown) if line.startswith("client region:"))
    assert shown[start:start + len(lines)] == lines
    assert not shown[start + len(lines)].startswith("  geoip") and not shown[start + len(lines)].startswith("  dist")


async def test_metrics_count_clients_by_region_and_source(reloadable):
    config, _ = reloadable
    dnsd = Dnsd(load_config(config))
    for ecs in ("198.51.100.0/24", "198.51.100.0/24", "2001:db8:1::/48", "192.0.2.0/24", "100.64.0.0/24", None):
        ask(dnsd.engine, GLOBAL, client="127.0.0.1", ecs=ecs)  # the repeat comes from the packet cache
    ask(dnsd.engine, "contoso.eastus.geo.azurecr.test", ecs="198.51.100.0/24")  # no routing: not counted
    text = render(make_registry(dnsd)).decode()
    for line in ['geotm_client_region_answers_total{region="southeastasia",source="database"} 3.0',
                 'geotm_client_region_answers_total{region="westeurope",source="database"} 1.0',
                 'geotm_client_region_answers_total{region="eastus",source="default"} 1.0',
                 'geotm_client_region_answers_total{region="eastus",source="networks"} 1.0',
                 "geotm_geoip_networks 7.0", "geotm_geoip_database_build_timestamp_seconds 1.7672256e+09"]:
        assert line in text
    assert "geotm_client_region" not in render(make_registry(dnsd, public=True)).decode()


# -- the real server --------------------------------------------------------------------------------

@pytest.fixture
def served(reloadable):
    config, database = reloadable
    with harness.dnsd(config) as process:
        yield process, database


DIG_ROUTED = [("198.51.100.0/24", "southeastasia"), ("192.0.2.0/24", "westeurope"), ("203.0.113.0/24", "eastus"),
              ("2001:db8:1::/48", "southeastasia"), ("2001:db8:2::/56", "westeurope"), ("2001:db8:3::/48", "eastus"),
              ("100.64.0.0/24", "eastus")]


def tm_target(server, subnet: str) -> str:
    output = dig(server, f"+subnet={subnet}", GLOBAL)
    hop = next(line for line in answer_lines(output) if line.startswith("contoso.tm.azurecr.test."))
    return hop.split()[-1].split(".")[1]


def test_dig_with_ecs_is_routed_by_the_database_then_by_a_new_file(served):
    server, database = served
    assert {subnet: tm_target(server, subnet) for subnet, _ in DIG_ROUTED} == dict(DIG_ROUTED)
    replace_file(database, lambda path: write_db(path, [("198.51.100.0/24", WASHINGTON), ("2001:db8:1::/48", FRANKFURT)]))
    harness.wait_until(lambda: tm_target(server, "198.51.100.0/24") == "eastus", 15, "the new database serving")
    assert tm_target(server, "2001:db8:1::/48") == "westeurope"
    assert server.wait_for_log("geoip_loaded", 5)
    _garbage(database)  # in place, not even atomically: the reload fails, the last good database serves on
    assert server.wait_for_log("config_reload_failed", 15)
    assert tm_target(server, "198.51.100.0/24") == "eastus"


def test_the_server_will_not_start_with_a_broken_database(reloadable):
    config, database = reloadable
    _truncated(database)
    run = subprocess.run([sys.executable, "-m", "dnsd", "serve", "--config", str(config), "--listen", "127.0.0.1:0",
                          "--admin-listen", "off"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 2
    assert "dnsd: cannot start:" in run.stderr and "clients.geoip.database:" in run.stderr and \
        "not a MaxMind DB file" in run.stderr


def test_the_compiled_map_agrees_with_the_database_and_the_networks_everywhere(tmp_path):
    """Against a reference that asks maxminddb and the hand-written networks directly: random networks
    of random regions and sizes (so the index has chunks of many ranges, of one, and empty ones), and
    random addresses and ECS subnets, many near the networks' edges."""
    rng = random.Random(13)
    places = [TOKYO, FRANKFURT, WASHINGTON, city("AU", "OC")]
    networks = set()
    for _ in range(1500):
        if rng.random() < 0.7:
            length = rng.choice((16, 20, 22, 24, 24, 24, 25, 28))
            networks.add(ipaddress.ip_network((rng.randrange(1 << 24, 224 << 24) >> (32 - length) << (32 - length),
                                               length)))
        else:
            length = rng.choice((32, 36, 44, 48, 48, 56, 64))
            base = int(ipaddress.IPv6Address("2001:db8::")) if rng.random() < 0.5 else (0x2 << 124) + (rng.getrandbits(20) << 104)
            address = base + (rng.getrandbits(32) << 64)
            networks.add(ipaddress.ip_network((address >> (128 - length) << (128 - length), length)))
    # disjoint: drop any network inside another (mmdb-writer would split the outer one)
    kept = [n for n in networks if not any(o != n and o.version == n.version and n.subnet_of(o) for o in networks)]
    path = write_db(tmp_path / "random.mmdb", [(str(n), rng.choice(places)) for n in kept])
    hand = tuple(ClientNetwork(ipaddress.ip_network(cidr), region) for cidr, region in
                 (("10.0.0.0/8", "westeurope"), ("10.1.0.0/16", "southeastasia"), (str(kept[0]), "westeurope"),
                  ("2001:db8::/40", "eastus")))
    topology = dataclasses.replace(topology_with(GeoIPSettings(str(path), continents={"OC": "southeastasia"})),
                                   client_networks=hand)
    table = geoip.load(topology)
    matcher = PrefixMatcher((cn.network, i) for i, cn in enumerate(hand))
    default = len(hand)
    chooser = geoip.RegionChooser(topology)
    reader = maxminddb.open_database(str(path))

    def reference(bits: int, address: int) -> int:
        index = matcher.lookup(bits, address)
        if index is not None:
            return index
        record = reader.get(ipaddress.IPv4Address(address) if bits == 32 else ipaddress.IPv6Address(address))
        place = geoip.place_of(record) if record else None
        choice = chooser.choose(place) if place else None
        return default if choice is None else default + 1 + choice[0]

    edges = [(n.max_prefixlen, int(n.network_address) + d) for n in kept + [cn.network for cn in hand]
             for d in (-1, 0, 1, n.num_addresses - 1, n.num_addresses)]
    samples = edges + [(32, rng.getrandbits(32)) for _ in range(2000)] + [(128, rng.getrandbits(128)) for _ in range(500)]
    for bits, address in samples:
        address %= 1 << bits
        assert table.lookup(bits, address) == reference(bits, address), (bits, address)
        prefix = rng.choice((24, 28, 32) if bits == 32 else (48, 56, 64))
        first = address >> (bits - prefix) << (bits - prefix)
        cuts = sorted({first} | {start for b, start in edges if b == bits and first < start <= first + (1 << (bits - prefix)) - 1})
        values = {reference(bits, cut) for cut in cuts}
        expected = values.pop() if len(values) == 1 else None
        assert table.lookup(bits, first, prefix) == expected, (bits, first, prefix)
    reader.close()


def test_sighup_applies_a_new_country_table_to_the_same_database(served, reloadable):
    server, _ = served
    config, _ = reloadable
    assert tm_target(server, "192.0.2.0/24") == "westeurope"
    data = yaml.safe_load(config.read_text())
    data["clients"]["geoip"]["countries"] = {"DE": "southeastasia"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    os.kill(server.pid, signal.SIGHUP)
    harness.wait_until(lambda: tm_target(server, "192.0.2.0/24") == "southeastasia", 15, "the country table applied")
    assert tm_target(server, "2001:db8:2::/48") == "southeastasia" and tm_target(server, "203.0.113.0/24") == "eastus"


def test_explain_says_so_when_the_database_became_unreadable(reloadable):
    config, database = reloadable
    snapshot = new_snapshot(load_config(config))
    _garbage(database)  # after the compile: explain reads the record from the file now
    _, text = explain(snapshot, GLOBAL, 1, client_context("127.0.0.1", "198.51.100.0/24"))
    assert "client region: southeastasia (GeoIP database: " in text  # the compiled table still places it
    assert f"  geoip record: cannot read the database now: {database}:" in text
