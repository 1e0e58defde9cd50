"""A synthetic GeoIP City database the size of GeoLite2 City (about 3.5 million networks), written with
mmdb-writer, for measuring what dnsd's GeoIP compile costs in time and memory (bench/geoip.py).

    .venv/bin/python bench/geoipdb.py --out /tmp/geotm-geoip-big.mmdb           # 3.5 M networks, ~6 min
    .venv/bin/python bench/geoipdb.py --networks 200000 --out /tmp/small.mmdb    # a quick one

Made-up countries (two-letter codes, a centre each) with made-up cities around them; the address
space is handed out in runs of networks of one country, as registries hand it out, each network a
City record of the shape GeoLite2 City has (names in eight languages, subdivision, postal code,
registered country, location with accuracy radius and time zone). The same seed gives the same
database. mmdb-writer is pure Python: about 100 s per million networks and 0.7 GB of memory per
million while it builds, so the big one takes some minutes (it is made once and kept).
"""
from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import time

LANGUAGES = ("de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN")
CONTINENTS = ("AF", "AS", "EU", "NA", "OC", "SA")
IPV6_SHARE = 0.3  # of the networks: GeoLite2 City has about 30% IPv6 networks


def _names(text: str) -> dict[str, str]:
    return {language: f"{text} ({language})" for language in LANGUAGES}


def made_up_world(rng: random.Random, countries: int, cities: int) -> list[list[dict]]:
    """Per country, its cities' full City records."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    world = []
    for index in range(countries):
        code = letters[index // 26 % 26] + letters[index % 26]
        continent = CONTINENTS[index % len(CONTINENTS)]
        centre = (rng.uniform(-45, 65), rng.uniform(-175, 175))
        country = {"geoname_id": 1_000_000 + index, "iso_code": code, "names": _names(f"Country {code}")}
        records = []
        for city in range(max(1, cities // countries)):
            latitude = max(-89.0, min(89.0, centre[0] + rng.gauss(0, 4)))
            longitude = (centre[1] + rng.gauss(0, 6) + 180) % 360 - 180
            records.append({
                "city": {"geoname_id": 2_000_000 + index * 10_000 + city, "names": _names(f"City {code}{city}")},
                "continent": {"code": continent, "geoname_id": 6_000_000 + CONTINENTS.index(continent),
                              "names": _names(f"Continent {continent}")},
                "country": country,
                "location": {"accuracy_radius": rng.choice((5, 10, 20, 50, 100, 200, 500, 1000)),
                             "latitude": round(latitude, 4), "longitude": round(longitude, 4),
                             "time_zone": f"Etc/GMT{round(-longitude / 15):+d}"},
                "postal": {"code": f"{rng.randrange(10000, 99999)}"},
                "registered_country": country,
                "subdivisions": [{"geoname_id": 3_000_000 + index * 100 + city % 50, "iso_code": f"S{city % 50}",
                                  "names": _names(f"Region {code}{city % 50}")}],
            })
        world.append(records)
    return world


def networks(rng: random.Random, count: int):
    """(network, run index) for `count` networks: IPv4 from 1.0.0.0 and IPv6 from 2001:200::, in the
    sizes real allocations have (mostly /24 and /48), with now and then a gap nobody has."""
    v6 = int(count * IPV6_SHARE)
    families = ((4, count - v6, int(ipaddress.IPv4Address("1.0.0.0")), (24, 24, 24, 24, 23, 22, 21, 20, 25, 26, 28)),
                (6, v6, int(ipaddress.IPv6Address("2001:200::")), (48, 48, 48, 44, 40, 36, 32, 56, 64)))
    for version, wanted, start, lengths in families:
        bits = 32 if version == 4 else 128
        cursor = start
        for _ in range(wanted):
            length = rng.choice(lengths)
            size = 1 << (bits - length)
            cursor = (cursor + size - 1) // size * size  # aligned to its own size
            if rng.random() < 0.05:
                cursor += size  # a gap: addresses in no network
            yield (ipaddress.IPv4Network((cursor, length)) if version == 4
                   else ipaddress.IPv6Network((cursor, length)))
            cursor += size


def write(path: str, count: int, countries: int = 240, cities: int = 100_000, seed: int = 13) -> dict:
    from mmdb_writer import MMDBWriter  # start-up: a test/bench-only dependency
    from netaddr import IPSet  # start-up: comes with mmdb-writer

    rng = random.Random(seed)
    world = made_up_world(rng, countries, cities)
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City",
                        languages=list(LANGUAGES), description="geotm bench: synthetic City database")
    started = time.monotonic()
    run_left, records = 0, world[0]
    for network in networks(rng, count):
        if run_left == 0:  # a new run of one country's networks: 1 to 60 of them
            records, run_left = world[rng.randrange(len(world))], rng.randint(1, 60)
        run_left -= 1
        writer.insert_network(IPSet([str(network)]), records[rng.randrange(len(records))])
    inserted = time.monotonic()
    writer.to_db_file(path)
    return {"networks": count, "insert_s": round(inserted - started, 1),
            "write_s": round(time.monotonic() - inserted, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="database file to write")
    parser.add_argument("--networks", type=int, default=3_500_000)
    parser.add_argument("--cities", type=int, default=100_000, help="distinct City records")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    print(write(args.out, args.networks, cities=args.cities, seed=args.seed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
