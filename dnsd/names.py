"""The names geotm generates for a registry: global, privatelink, traffic-manager, replica host, regional, data."""
from __future__ import annotations

# Labels with a fixed meaning under the zone; a registry may not be named after one.
PRIVATELINK, TRAFFIC_MANAGER, GEO, DATA, REPLICA_HOSTS = "privatelink", "tm", "geo", "data", "reg"
RESERVED_LABELS = frozenset({PRIVATELINK, TRAFFIC_MANAGER, GEO, DATA, REPLICA_HOSTS})


def global_name(registry: str, zone: str) -> str:
    return f"{registry}.{zone}"


def privatelink_name(registry: str, zone: str) -> str:
    return f"{registry}.{PRIVATELINK}.{zone}"


def traffic_manager_name(registry: str, zone: str) -> str:
    return f"{registry}.{TRAFFIC_MANAGER}.{zone}"


def default_replica_host(registry: str, replica: str, zone: str) -> str:
    return f"{registry}.{replica}.{REPLICA_HOSTS}.{zone}"


def regional_name(registry: str, replica: str, zone: str) -> str:
    return f"{registry}.{replica}.{GEO}.{zone}"


def regional_private_name(registry: str, replica: str, zone: str) -> str:
    return f"{registry}.{replica}.{GEO}.{PRIVATELINK}.{zone}"


def data_name(registry: str, replica: str, zone: str) -> str:
    return f"{registry}.{replica}.{DATA}.{zone}"


def data_private_name(registry: str, replica: str, zone: str) -> str:
    return f"{registry}.{replica}.{DATA}.{PRIVATELINK}.{zone}"


def is_subdomain(name: str, zone: str) -> bool:
    """True when canonical `name` is `zone` or below it."""
    return name == zone or name.endswith("." + zone) or zone == ""


