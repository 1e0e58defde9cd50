"""Loading a config: read the file, validate each section in turn (each one's result passed on to the
sections that check against it) and build the frozen model; every problem raised at once."""
from __future__ import annotations

import hashlib
from pathlib import Path

from dnsd.config import keys
from dnsd.config.cluster import cluster_section
from dnsd.config.errors import ConfigError, Mark, Problem, Problems
from dnsd.config.feeds import health_section, probes_section
from dnsd.config.forward import forward_section
from dnsd.config.reader import Reader
from dnsd.config.registries import check_replica_hosts, registries_section
from dnsd.config.server import admin_section, server_section
from dnsd.config.topology import topology_section
from dnsd.config.views import views_section
from dnsd.config.yamlnodes import Map, Node, parse_yaml, read_text
from dnsd.config.zone import check_generated_names, zone_section
from dnsd.model import AdminSettings, Config


def load_config(path: str | Path, now: float | None = None) -> Config:
    """Read, validate and build. Raises ConfigError listing every problem, or OSError if unreadable.
    now: the time (seconds since the epoch) a `serial: auto` takes; whoever serves the zone passes its
    clock. None: an auto serial reads 0, for callers that never serve it (checks, probes, tests)."""
    path = Path(path)
    text = read_text(path)
    return parse_config_text(text, str(path), path.parent, now)


def parse_config_text(text: str, filename: str = "<config>", base_dir: str | Path | None = None,
                      now: float | None = None) -> Config:
    """base_dir: where relative file paths in the config point (the config file's folder);
    None leaves them relative to the working directory. now: as load_config's."""
    root = parse_yaml(text, filename)
    problems = Problems()
    if root is None:
        raise ConfigError([Problem(Mark(filename, 1, 1), "", "the config is empty")])
    config = _build(Reader(problems, base_dir), root, filename, hashlib.sha256(text.encode()).hexdigest(), now)
    problems.raise_if_any()
    assert config is not None
    return config


def load_admin_settings(path: str | Path) -> AdminSettings:
    """Only the admin section: how CLI commands reach a running dnsd, even when the rest of the file
    is broken (`dnsd reload` must still be able to ask the server, which reports every problem)."""
    path = Path(path)
    root = parse_yaml(read_text(path), str(path))
    problems = Problems()
    node = root.get("admin") if isinstance(root, Map) else None
    settings = admin_section(Reader(problems, path.parent), node)
    problems.raise_if_any()
    assert settings is not None
    return settings


def _build(r: Reader, root: Node, filename: str, digest: str, now: float | None) -> Config | None:
    """None when a section could not be built (its problems are in r)."""
    top = r.mapping(root, keys.TOP, required=("zone", "registries"), what="the config (a mapping)")
    if top is None:
        return None
    server = server_section(r, top.get("server"))
    zone, located_records = zone_section(r, top.get("zone"), now)
    topology, missing_latency = topology_section(r, top)
    registries = registries_section(r, top.get("registries"), zone, topology, missing_latency)
    views = views_section(r, top.get("views"), registries)
    probes = probes_section(r, top.get("probes"))
    health = health_section(r, top.get("health"))
    admin = admin_section(r, top.get("admin"))
    forward = forward_section(r, top.get("forward"), server)
    cluster_ok, cluster = cluster_section(r, top.get("cluster"))
    if zone is not None:
        check_generated_names(r, located_records, zone, registries)
        check_replica_hosts(r, top.get("registries"), registries)
    if None in (server, zone, topology, probes, health, admin) or not cluster_ok:
        return None
    return Config(source=filename, digest=digest, server=server, zone=zone, topology=topology,
                  registries=tuple(reg for reg in registries.values() if reg is not None),
                  views=tuple(views), probes=probes, health=health, admin=admin, forward=forward,
                  cluster=cluster)
